"""Outbox: hand results from executor threads to the consumer loop, one wake-up per batch."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Outbox"]

T = TypeVar("T")


class Outbox(Generic[T]):
    """Many producer threads ``post`` items; the loop receives them in batches.

    Items go into a ``collections.deque`` (append/popleft are atomic, documented
    thread-safe, also on free-threaded builds). ``_lock`` guards only the ``_scheduled``
    flag, so that a burst of posts costs one ``call_soon_threadsafe`` wake-up, not one each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Callable[[list[T]], None]) -> None:
        self._loop = loop
        self._handler = handler
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, item: T) -> None:
        """Queue ``item`` for the loop; callable from any thread, including the loop's."""
        self._items.append(item)
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop is closed: the worker is gone, nothing left to do
            pass

    def drain(self) -> None:
        """Hand what was posted so far to the handler (the loop's thread only): run by the
        scheduled wake-up, or earlier by the consumer when it needs an up-to-date count."""
        with self._lock:
            self._scheduled = False
        items = []
        pop = self._items.popleft
        while True:
            try:
                items.append(pop())
            except IndexError:
                break
        if items:
            self._handler(items)
