"""A bounded mapping that forgets its least recently used entries (Celery's ``LRUCache``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(MutableMapping[K, V], Generic[K, V]):
    """At most ``limit`` entries (``None``: no bound); reading or writing an entry makes it
    the most recent, and a write past the limit drops the least recent ones.

    ``data`` is the underlying ``OrderedDict`` (oldest first) and ``limit`` the bound, as
    Flower reads them. Thread-safety: every method may be called from any thread
    (``_lock`` guards ``data``); ``keys``/``values``/``items`` return lists (snapshots), so
    iterating them never races a writer.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = self.data[key]
            self.data.move_to_end(key)
            return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self.data[key] = value
            self.data.move_to_end(key)
            if self.limit is not None:
                while len(self.data) > self.limit:
                    self.data.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data  # a lookup: never reorders

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def keys(self) -> list[K]:  # type: ignore[override]
        with self._lock:
            return list(self.data)

    def values(self) -> list[V]:  # type: ignore[override]
        with self._lock:
            return list(self.data.values())

    def items(self) -> list[tuple[K, V]]:  # type: ignore[override]
        with self._lock:
            return list(self.data.items())

    def clear(self) -> None:
        with self._lock:
            self.data.clear()

    def __repr__(self) -> str:
        return f"<LRUCache: {len(self.data)} of {self.limit}>"
