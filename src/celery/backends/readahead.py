"""Read-ahead of results: tasks sent from this process whose results are still unread.

A producer that sends many tasks and then calls ``get()`` on each would pay one round trip
per result. Instead, the first ``get()`` also reads the results of the tasks sent after it
(one MGET); the ready ones are kept and the next ``get()`` calls return them at once.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .. import states

__all__ = ["SentResults"]

Meta = dict[str, Any]

#: Never read more than this many other results ahead in one batch.
MAX_AHEAD = 256


class SentResults:
    """The unread results of tasks sent from this process, and those read ahead.

    Thread-safe: any thread sends and gets; ``_lock`` guards every field. Entries are held
    by weak reference to the AsyncResult that ``delay()`` returned: once it is gone nobody
    can take its result, and the entry is dropped (dead ones are pruned as the maps grow).
    ``limit`` bounds both maps; past it, the oldest quarter goes (a ``get()`` of one of
    those just reads the backend itself).

    How far to read ahead adapts: it doubles while everything read ahead was ready, and
    falls to twice what was ready otherwise, so a producer that waits on results as they
    come does not keep reading hundreds of results that are not there yet.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._unread: dict[str, weakref.ref[Any]] = {}
        self._ready: dict[str, tuple[weakref.ref[Any], Meta]] = {}
        self._ahead = 16
        self._limit = limit
        self._prune_at = min(1024, limit)

    def sent(self, result: Any) -> None:
        """Note a task just sent; ``result`` is the AsyncResult handed to the caller."""
        with self._lock:
            self._unread[result.id] = weakref.ref(result)
            if len(self._unread) >= self._prune_at:
                self._prune()

    def _prune(self) -> None:
        for table in (self._unread, self._ready):
            for dead in [tid for tid, kept in table.items() if _owner(kept)() is None]:
                del table[dead]
            if len(table) >= self._limit:  # all alive: drop the oldest quarter at once
                for old in list(itertools.islice(table, len(table) - self._limit * 3 // 4)):
                    del table[old]
        size = max(len(self._unread), len(self._ready))
        self._prune_at = min(self._limit, max(1024, 2 * size))

    def take(self, task_id: str) -> Meta | None:
        """The result read ahead for ``task_id`` (removed), or None."""
        with self._lock:
            self._unread.pop(task_id, None)
            kept = self._ready.pop(task_id, None)
        return None if kept is None else kept[1]

    def peek(self, task_id: str) -> Meta | None:
        """The result read ahead for ``task_id`` (kept), or None."""
        with self._lock:
            kept = self._ready.get(task_id)
        return None if kept is None else dict(kept[1])

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._unread.pop(task_id, None)
            self._ready.pop(task_id, None)

    def batch(self, task_id: str) -> list[str]:
        """``task_id`` and the unread ids to read with it (oldest first, live ones only)."""
        ids = [task_id]
        with self._lock:
            self._unread.pop(task_id, None)
            dead = []
            for tid, owner in self._unread.items():
                if len(ids) > self._ahead:
                    break
                if owner() is None:
                    dead.append(tid)
                else:
                    ids.append(tid)
            for tid in dead:
                del self._unread[tid]
        return ids

    def absorb(self, ids: Sequence[str], raws: Sequence[bytes | str | None],
               decode: Callable[[str, bytes | str | None], Meta]) -> Meta:
        """Take the payloads an MGET of ``batch(...)`` returned; the first id's meta.

        The others that are ready are kept for ``take``; ``decode`` is the backend's
        ``meta_from_payload``. An undecodable read-ahead payload is left for its own
        ``get()`` to report.
        """
        first = decode(ids[0], raws[0])
        ready: list[tuple[str, Meta]] = []
        for tid, raw in zip(ids[1:], raws[1:], strict=True):
            if raw is None:
                continue
            try:
                meta = decode(tid, raw)
            except Exception:
                continue
            if meta.get("status") in states.READY_STATES:
                ready.append((tid, meta))
        with self._lock:
            others = len(ids) - 1
            if others and len(ready) == others:
                self._ahead = min(MAX_AHEAD, 2 * self._ahead)
            elif others:
                self._ahead = min(MAX_AHEAD, max(2 * len(ready), 1))
            for tid, meta in ready:
                owner = self._unread.pop(tid, None)
                if owner is not None:
                    self._ready[tid] = (owner, meta)
            if len(self._ready) >= self._prune_at:
                self._prune()
        return first


def _owner(kept: weakref.ref[Any] | tuple[weakref.ref[Any], Meta]) -> weakref.ref[Any]:
    return kept[0] if isinstance(kept, tuple) else kept
