"""Cleanup when an event loop that is not ours shuts down.

A client made on a caller's loop (``await task.adelay()`` inside the user's
``asyncio.run(main())``) holds connections bound to that loop, and nothing tells us when the
loop ends. ``asyncio.run`` (and ``asyncio.Runner``, uvloop's ``run``) cancel the loop's
tasks, then close its async generators (``loop.shutdown_asyncgens()``) while the loop still
runs, then close it. An async generator started on the loop is such a generator: its
``finally`` runs at that point and may await. That is the one hook a loop offers; a loop
closed without ``shutdown_asyncgens`` runs no cleanup.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

__all__ = ["LoopShutdown"]


class LoopShutdown:
    """Runs ``cleanup()`` on the running loop when that loop's async generators are shut
    down, at most once. Create and ``await arm()`` it from the loop it watches, and keep a
    reference for as long as it should run: the loop holds its async generators weakly.
    Used only from that loop.
    """

    __slots__ = ("_agen", "_cleanup")

    def __init__(self, cleanup: Callable[[], Awaitable[Any]]) -> None:
        self._cleanup = cleanup
        self._agen: AsyncGenerator[None, None] | None = None

    async def arm(self) -> None:
        """Register with the running loop (the first step of the generator does that)."""
        if self._agen is None:
            self._agen = self._wait()
            await self._agen.__anext__()

    async def _wait(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:  # GeneratorExit from the loop's shutdown_asyncgens() (or garbage collection)
            await self._cleanup()
