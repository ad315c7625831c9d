"""``BlockingIO.settle``: a call whose awaiting caller was cancelled still runs to its end on
the pool, and ``settle`` waits for it (what lets a purge cover a cancelled publish)."""

from __future__ import annotations

import asyncio
import threading
import time

from celery.transport.embedded import BlockingIO


def test_settle_waits_for_a_call_whose_caller_was_cancelled() -> None:
    io, started, finished = BlockingIO("test-settle", 2), threading.Event(), []

    def slow_write() -> None:
        started.set()
        time.sleep(0.2)
        finished.append(time.monotonic())

    async def main() -> float:
        call = asyncio.ensure_future(io.run(slow_write))
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        assert finished == []  # the caller gave up; the thread has not finished
        await io.settle()
        return time.monotonic()

    try:
        settled = asyncio.run(main())
    finally:
        io.close()
    assert len(finished) == 1 and finished[0] <= settled


def test_settle_with_nothing_pending_returns_at_once() -> None:
    io = BlockingIO("test-settle-idle", 1)
    try:
        assert io.call(lambda: 7) == 7
        asyncio.run(asyncio.wait_for(io.settle(), 1))
    finally:
        io.close()
