"""What the embedded brokers and backends share: waking waiters, and blocking I/O off the loop.

The SQLite and filesystem brokers (and their result backends) have no server to push a
notification, so a waiter checks again when it is woken or when its poll interval elapses:

* ``Wakeup`` wakes every coroutine waiting on it, whatever thread or event loop it runs on,
  when a writer in *this* process calls ``notify()`` (so in-process producers hand work to
  consumers at once). Writers in other processes are seen at the next poll.
* ``BlockingIO`` runs blocking calls (sqlite3, file system) on a small dedicated thread pool,
  never on an event loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

__all__ = ["BlockingIO", "Shared", "Wakeup", "poll", "url_name", "wakeup_for"]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class Wakeup:
    """A broadcast signal for coroutines on any event loop.

    To not miss a notify that lands between checking for work and starting to wait, take a
    ``ticket()`` before checking and pass it to ``wait(since=ticket)``: the wait returns at
    once if anything was notified after the ticket was taken.

    Thread-safety: ``notify`` may be called from any thread. Waiters (``(loop, future)``
    pairs) and the notification counter are kept under ``_lock``; ``notify`` takes the whole
    set under the lock and resolves each future on its own loop with
    ``loop.call_soon_threadsafe``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def ticket(self) -> int:
        """The current notification count, for ``wait(since=...)``."""
        with self._lock:
            return self._generation

    def notify(self) -> None:
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, set()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    async def wait(self, timeout: float, since: int | None = None) -> bool:
        """Wait until ``notify`` or ``timeout`` seconds; True when notified.

        With ``since`` (a ``ticket()``), returns True at once if a notify came after it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            if since is not None and since != self._generation:
                return True
            if timeout <= 0:
                return False
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)


async def poll(wakeup: Wakeup, attempt: Callable[[], Awaitable[Sequence[T]]], timeout: float,
               first: float, longest: float) -> Sequence[T]:
    """Run ``attempt`` until it returns something or ``timeout`` seconds have passed.

    Between attempts, wait for ``wakeup`` (a write in this process: at once) or a poll
    interval (a write by another process) that starts at ``first`` and doubles up to
    ``longest`` while nothing happens; a wake-up starts it over. The ticket taken before each
    attempt means a notify during the attempt is never missed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0.0)
    delay = first
    while True:
        ticket = wakeup.ticket()
        found = await attempt()
        remaining = deadline - loop.time()
        if found or remaining <= 0:
            return found
        if await wakeup.wait(min(delay, remaining), since=ticket):
            delay = first
        else:
            delay = min(delay * 2, longest)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Shared(Generic[K, V]):
    """Objects shared by the whole process, one per key, made on first use by ``factory``.

    Thread-safety: the mapping is guarded by ``_lock``; ``get`` makes each key's object
    exactly once, whichever threads ask at the same time.
    """

    def __init__(self, factory: Callable[[], V]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = self._factory()
            return item


#: One Wakeup per resource (a database file, a folder), so that every transport or backend
#: object on that resource in this process shares it.
_wakeups: Shared[str, Wakeup] = Shared(Wakeup)


def wakeup_for(resource: str) -> Wakeup:
    """The process-wide Wakeup of ``resource`` (e.g. an absolute database path)."""
    return _wakeups.get(resource)


def url_name(url: str) -> str:
    """The name an in-process URL gives its store: ``memory://x`` and ``cache+memory://x``
    are both ``"x"``; ``memory://`` is ``""``."""
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


class BlockingIO:
    """A small thread pool of its own for blocking calls, started on first use.

    ``run`` awaits ``fn(*args)`` on the pool from an event loop; ``call`` runs it on the pool
    and blocks the calling (non-loop) thread. Threads are named ``<name>_<n>``; ``close`` shuts
    the pool down (idempotent; a later call starts a new pool). ``settle`` waits for every
    call submitted so far, including those whose awaiting caller was cancelled: a cancelled
    ``run`` cannot stop a call a thread has already started, so e.g. a purge must settle
    first or a publish cancelled mid-write could land after it.
    """

    def __init__(self, name: str, max_workers: int = 2) -> None:
        self.name = name
        self.max_workers = max_workers
        self._lock = threading.Lock()  # guards _pool and _pending
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix=self.name
                )
            return self._pool

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future = self._executor().submit(fn, *args)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._submit(fn, *args).result()

    async def settle(self) -> None:
        """Wait until every call submitted before this one has finished (ran or failed)."""
        with self._lock:
            pending = list(self._pending)
        if pending:
            await asyncio.wait([asyncio.wrap_future(f) for f in pending])

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
