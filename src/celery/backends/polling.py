"""Waiting for results on backends that cannot push (SQLite, files, in-process memory).

One ``ReadyPoller`` per backend and event loop serves every ``await_ready`` on that loop:
it reads all awaited results in one batch (``ResultBackend.aget_many_raw``), resolves the
waiters whose task is ready, then sleeps until a write in this process wakes it
(``embedded.Wakeup``) or its poll interval elapses (a write by another process). The
interval starts at ``first`` and doubles to ``longest`` while nothing changes, and starts
over on every wake-up or round that found a result, so a busy producer is answered within a millisecond or two and an
idle one costs a read every ``longest`` seconds, however many results it awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from .. import states

if TYPE_CHECKING:
    from ..transport.embedded import Wakeup
    from .base import ResultBackend

__all__ = ["ReadyPoller", "forget_pollers", "poller_for"]

logger = logging.getLogger(__name__)

Meta = dict[str, Any]


class ReadyPoller:
    """Loop-bound: create and use only on its own event loop (no locks inside)."""

    def __init__(self, backend: ResultBackend, wakeup: Wakeup, first: float, longest: float) -> None:
        self._backend = backend
        self._wakeup = wakeup
        self._first = first
        self._longest = longest
        self._loop = asyncio.get_running_loop()
        self._waiters: dict[str, list[asyncio.Future[Meta]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, task_id: str) -> Meta:
        """The task's meta once it is ready (wrap in a timeout to bound the wait)."""
        future: asyncio.Future[Meta] = self._loop.create_future()
        self._waiters.setdefault(task_id, []).append(future)
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run(), name="result-poller")
        try:
            return await future
        finally:
            waiting = self._waiters.get(task_id)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(future)
                if not waiting:
                    del self._waiters[task_id]
            if not self._waiters:  # idle: stop polling, and leave the registry
                if self._task is not None and not self._task.done():
                    self._task.cancel()
                self._task = None
                _forget(self)

    async def _run(self) -> None:
        delay = self._first
        while self._waiters:
            ticket = self._wakeup.ticket()
            ids = list(self._waiters)
            try:
                raws = await self._backend.aget_many_raw(ids)
            except Exception as exc:  # e.g. ConnectionLost: every waiter learns it
                for task_id in ids:
                    for future in self._waiters.get(task_id, ()):
                        if not future.done():
                            future.set_exception(exc)
                return
            resolved = False
            for task_id in ids:
                raw = raws.get(task_id)
                if raw is None:
                    continue
                meta: Meta | None = None
                error: Exception | None = None
                try:
                    meta = self._backend.meta_from_payload(task_id, raw)
                except Exception as exc:  # a stored value we cannot read
                    error = exc
                if meta is not None and meta.get("status") not in states.READY_STATES:
                    continue
                resolved = True
                for future in self._waiters.get(task_id, ()):
                    if not future.done():
                        if error is not None:
                            future.set_exception(error)
                        else:
                            future.set_result(meta)  # type: ignore[arg-type]
            if not self._waiters:
                return
            # Results arriving (here or, seen by this read, elsewhere): more may follow soon.
            if await self._wakeup.wait(delay, since=ticket) or resolved:
                delay = self._first
            else:
                delay = min(delay * 2, self._longest)


#: (backend id, loop) -> poller, while it has waiters. Guarded by ``_pollers_lock``; each
#: poller is then used only on its own loop.
_pollers: dict[tuple[int, asyncio.AbstractEventLoop], ReadyPoller] = {}
_pollers_lock = threading.Lock()


def poller_for(backend: ResultBackend, wakeup: Wakeup, first: float, longest: float) -> ReadyPoller:
    """The running loop's poller for ``backend`` (made on first use)."""
    loop = asyncio.get_running_loop()
    key = (id(backend), loop)
    with _pollers_lock:
        poller = _pollers.get(key)
        if poller is None or poller._backend is not backend:
            poller = _pollers[key] = ReadyPoller(backend, wakeup, first, longest)
        return poller


def _forget(poller: ReadyPoller) -> None:
    with _pollers_lock:
        key = (id(poller._backend), poller._loop)
        if _pollers.get(key) is poller:
            del _pollers[key]


def forget_pollers(backend: ResultBackend, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Drop ``backend``'s pollers (of ``loop``, or of every loop) from the registry, on the
    backend's close. A poller still serving waiters goes on until they are done; it is just
    not handed out again."""
    with _pollers_lock:
        for key in [k for k in _pollers if k[0] == id(backend) and loop in (None, k[1])]:
            del _pollers[key]
