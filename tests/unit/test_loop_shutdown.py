"""LoopShutdown: cleanup on a loop's shutdown_asyncgens, as asyncio.run does it."""

from __future__ import annotations

import asyncio
import gc

from celery.utils.loops import LoopShutdown


def test_cleanup_runs_once_on_the_loop_after_its_tasks_were_cancelled() -> None:
    seen: list[tuple[bool, asyncio.AbstractEventLoop]] = []
    sleepers: list[asyncio.Future[None]] = []
    kept: list[LoopShutdown] = []  # the loop holds async generators weakly

    async def cleanup() -> None:
        await asyncio.sleep(0)  # it may await: the loop still runs
        seen.append((sleepers[0].cancelled(), asyncio.get_running_loop()))

    async def main() -> asyncio.AbstractEventLoop:
        sleepers.append(asyncio.ensure_future(asyncio.sleep(60)))
        kept.append(LoopShutdown(cleanup))
        await kept[0].arm()
        await kept[0].arm()  # armed once
        return asyncio.get_running_loop()

    loop = asyncio.run(main())
    assert seen == [(True, loop)]


def test_nothing_runs_when_not_armed_or_when_the_loop_is_closed_without_the_hook() -> None:
    calls: list[int] = []

    async def cleanup() -> None:
        calls.append(1)

    async def unarmed() -> LoopShutdown:
        return LoopShutdown(cleanup)

    kept = asyncio.run(unarmed())
    loop = asyncio.new_event_loop()
    armed = LoopShutdown(cleanup)
    loop.run_until_complete(armed.arm())
    loop.close()  # no shutdown_asyncgens: the hook is never called, and nothing fails
    del armed
    gc.collect()
    assert calls == [] and kept is not None
