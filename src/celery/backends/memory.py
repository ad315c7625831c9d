"""``cache+memory://``: results kept in this process only (Celery's in-memory cache backend).

For tests and for trying things without a server: a worker in another process can't
reach it. Every backend object with the same URL in one process shares one store, so an
in-process worker and the producer see the same results. ``result_expires`` applies.

Thread-safety: one ``threading.Lock`` per store (``_Store.lock``) guards the mapping;
waiters on any event loop are woken through ``embedded.Wakeup`` after every write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import states
from ..transport.embedded import Shared, Wakeup, url_name
from .base import Conf, ResultBackend

__all__ = ["MemoryBackend"]


@dataclass(eq=False)
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: key -> (payload, state, expires at (time.monotonic()) or None)
    items: dict[str, tuple[bytes, str, float | None]] = field(default_factory=dict)
    wakeup: Wakeup = field(default_factory=Wakeup)


#: URL name -> store, for the whole process.
_stores: Shared[str, _Store] = Shared(_Store)


class MemoryBackend(ResultBackend):
    """Results in a dict shared by the process; see the module docstring."""

    def __init__(self, conf: Conf, url: str | None = None, **options: Any) -> None:
        super().__init__(conf, url, **options)
        self._store = _stores.get(url_name(url or "cache+memory://"))

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        store = self._store
        expires_at = None if self.expires is None else time.monotonic() + self.expires
        with store.lock:
            for task_id, payload, state in items:
                key = self.get_key_for_task(task_id)
                old = store.items.get(key)
                if old is not None and old[1] == states.SUCCESS and _alive(old):
                    continue  # a result, once successful, is never overwritten
                store.items[key] = (payload, state, expires_at)
        store.wakeup.notify()

    async def aget_raw(self, task_id: str) -> bytes | None:
        store = self._store
        key = self.get_key_for_task(task_id)
        with store.lock:
            item = store.items.get(key)
            if item is not None and not _alive(item):
                del store.items[key]
                item = None
        return None if item is None else item[0]

    async def adelete(self, task_id: str) -> None:
        with self._store.lock:
            self._store.items.pop(self.get_key_for_task(task_id), None)

    async def await_ready(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        # Every write in this process notifies; the 1 s poll is only a safety net.
        return await self._poll_ready(task_id, timeout, self._store.wakeup, 1.0, 1.0)

    # Saved groups live in the same store. Chords have no join of their own here: they get
    # Celery's celery.chord_unlock task, which polls the header's results.

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        expires_at = None if expires is None else time.monotonic() + expires
        with self._store.lock:
            self._store.items[self.get_key_for_group(group_id)] = (payload, states.SUCCESS,
                                                                   expires_at)

    async def _aget_group(self, group_id: str) -> bytes | None:
        key = self.get_key_for_group(group_id)
        with self._store.lock:
            item = self._store.items.get(key)
            if item is not None and not _alive(item):
                del self._store.items[key]
                item = None
        return None if item is None else item[0]

    async def _adelete_group(self, group_id: str) -> None:
        with self._store.lock:
            self._store.items.pop(self.get_key_for_group(group_id), None)


def _alive(item: tuple[bytes, str, float | None]) -> bool:
    return item[2] is None or item[2] > time.monotonic()
