"""The consumer's pause after an early hand-off: the task's thread gets the GIL first.

With CAP_EARLY (Redis), an idle worker starts a task straight from the blocking pop and then
fetches again at once: a script round trip, then BRPOP. That fetch is Python run on the
consumer's loop thread under the GIL, and the thread just woken to run the task gets the GIL
only once the loop thread blocks. A timestamp trace on 2 cores showed the task starting about
0.35 ms after its hand-off, then. So the fetch waits until an outcome comes back (the task,
if short, is done) or ``HANDOFF_PAUSE`` passes; a message that comes meanwhile waits at most
that long. The consumer pauses only when that task is its only one (a burst keeps
fetching), and a free-threaded build whose GIL is off, with no GIL to yield, never pauses:
that is decided when the consumer is made, at worker start, after the transport and the
tasks' modules are imported (an extension imported by them may have turned the GIL on).

Side by side on 2 cores (bench/peers.py, ours only, interleaved), the round-trip p50 fell
from 0.90-1.06 ms to 0.67-0.78 ms with no-op burst throughput unchanged within the noise.
"""

from __future__ import annotations

import asyncio

from ..utils import gil

__all__ = ["HANDOFF_PAUSE", "HandoffPause"]

#: Seconds the next fetch waits after a hand-off, at most, while the GIL is on.
HANDOFF_PAUSE = 0.001


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class HandoffPause:
    """Used on the consumer's loop thread only: ``pending`` is set by the early hand-off,
    ``wait`` runs before the next fetch, ``release`` when outcomes come back."""

    def __init__(self) -> None:
        self.pause = HANDOFF_PAUSE if gil.enabled() else 0.0
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
