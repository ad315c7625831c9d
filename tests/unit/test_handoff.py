"""The consumer's pause after an early hand-off (worker/handoff.py), on its own."""

from __future__ import annotations

import asyncio

from celery.worker.handoff import HandoffPause


def pause(seconds: float) -> HandoffPause:
    p = HandoffPause()
    p.pause = seconds
    return p


async def test_no_hand_off_no_pause():
    p = pause(30)
    await asyncio.wait_for(p.wait(), 5)  # would take 30 s if it paused


async def test_an_outcome_ends_the_pause():
    p = pause(30)
    p.pending = True
    asyncio.get_running_loop().call_later(0.05, p.release)
    await asyncio.wait_for(p.wait(), 5)
    assert not p.pending


async def test_an_outcome_before_the_wait_skips_the_pause():
    p = pause(30)
    p.pending = True
    p.release()  # the task was done before the fetch loop came to wait
    await asyncio.wait_for(p.wait(), 5)


async def test_without_an_outcome_the_pause_runs_out():
    p = pause(0.05)
    p.pending = True
    waiting = asyncio.ensure_future(p.wait())
    await asyncio.sleep(0)
    assert not waiting.done()  # paused, not returned at once
    await asyncio.wait_for(waiting, 5)
    assert not p.pending
    p.release()  # a late outcome with nobody waiting is harmless


async def test_a_zero_pause_never_waits():
    p = pause(0)
    p.pending = True
    await asyncio.wait_for(p.wait(), 5)
    assert not p.pending


def test_the_pause_is_chosen_when_made_from_the_gil_state_then(monkeypatch):
    from celery.worker import handoff

    monkeypatch.setattr(handoff.gil, "enabled", lambda: True)
    assert HandoffPause().pause == handoff.HANDOFF_PAUSE > 0
    # a free-threaded build whose GIL is off has no GIL to hand over: no pause
    monkeypatch.setattr(handoff.gil, "enabled", lambda: False)
    assert HandoffPause().pause == 0
    from celery.utils import gil

    monkeypatch.undo()
    assert HandoffPause().pause == (handoff.HANDOFF_PAUSE if gil.enabled() else 0)
