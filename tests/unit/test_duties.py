"""worker/duties.py: a periodic duty logs what it raises and goes on; restore intervals."""

from __future__ import annotations

import asyncio
import logging

import pytest

from celery.exceptions import ConnectionLost
from celery.worker.duties import every, restore_interval


async def test_a_duty_goes_on_after_any_error_and_says_when_it_recovers(caplog):
    stopped = asyncio.Event()
    errors = [RecursionError("maximum recursion depth exceeded"), ConnectionLost("down"),
              KeyError("x"), None, ValueError("again")]
    runs = []

    async def op() -> None:
        runs.append(1)
        error = errors[len(runs) - 1] if len(runs) <= len(errors) else None
        if error is not None:
            raise error
        if len(runs) >= 7:
            stopped.set()

    with caplog.at_level(logging.DEBUG, logger="celery.worker.duties"):
        await asyncio.wait_for(every(0.01, op, "restore_visible", stopped), 5)
    assert len(runs) == 7  # it ran on after each error until stopped
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("restore_visible failed; trying again")  # with traceback
    assert caplog.records[0].exc_info is not None
    assert sum("works again" in m for m in messages) == 2  # after the 3 errors, after the 5th


async def test_a_stopped_duty_ends_at_its_next_turn_without_cancellation():
    stopped = asyncio.Event()
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1

    task = asyncio.create_task(every(30, op, "x", stopped))
    await asyncio.sleep(0.05)
    stopped.set()
    await asyncio.wait_for(task, 1)
    assert calls == 1


@pytest.mark.parametrize("timeout, interval", [
    (3600, 60.0), (240, 60.0), (10, 2.5), (2, 1.0), (None, 60.0), ("x", 60.0),
    (float("nan"), 60.0),
])
def test_restore_interval_is_a_quarter_of_the_visibility_timeout_within_bounds(timeout, interval):
    assert restore_interval(timeout) == interval
