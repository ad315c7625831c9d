"""The consumer's pause after an early hand-off: the task's thread gets the GIL first.

With CAP_EARLY (Redis), an idle worker starts a task straight from the blocking pop and then
fetches again at once: a script round trip, then BRPOP. That fetch is Python run on the
consumer's loop thread under the GIL, and the thread just woken to run the task gets the GIL
only once the loop thread blocks. A timestamp trace on 2 cores showed the task starting about
0.35 ms after its hand-off, then. So the fetch waits until an outcome comes back (the task,
if short, is done) or ``HANDOFF_PAUSE`` passes; a message that comes meanwhile waits at most
that long. The consumer pauses only when that task is its only one (a burst keeps
fetching), and free-threaded builds, with no GIL to yield, never pause.

Side by side on 2 cores (bench/peers.py, ours only, interleaved), the round-trip p50 fell
from 0.90-1.06 ms to 0.67-0.78 ms with no-op burst throughput unchanged within the noise.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["HANDOFF_PAUSE", "HandoffPause"]

#: Seconds the next fetch waits after a hand-off, at most (0 without a GIL).
HANDOFF_PAUSE = 0.001 if getattr(sys, "_is_gil_enabled", lambda: True)() else 0.0


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class HandoffPause:
    """Used on the consumer's loop thread only: ``pending`` is set by the early hand-off,
    ``wait`` runs before the next fetch, ``release`` when outcomes come back."""

    def __init__(self) -> None:
        self.pause = HANDOFF_PAUSE
        #: A task was handed over since the last ``wait``.
        self.pending = False
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Wait until ``release`` or ``pause`` seconds, if a task was handed over."""
        if not self.pending:
            return
        self.pending = False
        if self.pause <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self.pause, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def release(self) -> None:
        """Outcomes came back: end the pause, or skip it if it has not begun yet."""
        self.pending = False
        if self._waiter is not None:
            _resolve(self._waiter)
