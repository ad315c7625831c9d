"""The portal: one background event loop per app, so sync callers can run coroutines."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..exceptions import CeleryError

__all__ = ["Portal", "new_event_loop"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when it is installed (less CPU per I/O), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on a stopped loop and let it unwind (2 s at most), so that
    threads blocked in ``Portal.call`` get an answer instead of waiting on a dead loop
    (and their own cancel then never reaches a closed loop)."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=2))


class Portal:
    """A daemon thread running an event loop, started on first use.

    ``call`` may be used from any thread, including one that is running its own event
    loop (the coroutine runs on the portal's loop, never on the caller's). Hand-off is
    through ``asyncio.run_coroutine_threadsafe`` and a ``concurrent.futures.Future``.
    """

    def __init__(self, name: str = "celery-portal") -> None:
        self._name = name
        # _lock guards start/stop so two threads never start two loops.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = new_event_loop()
                self._thread = threading.Thread(
                    target=self._run, args=(loop, ready), name=self._name, daemon=True
                )
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            _cancel_pending(loop)
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the portal loop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the portal loop and block until it is done.

        Must not be called from the portal's own thread (that would deadlock).
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Portal.call() from the portal thread would deadlock; await instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.CancelledError:
            if self._loop is None:  # stop() ran while this call waited
                raise CeleryError(f"{self._name} was stopped (the app was closed) while this "
                                  f"call waited on it") from None
            raise
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
        except BaseException:
            future.cancel()
            raise

    def stop(self, cleanup: Coroutine[Any, Any, Any] | None = None) -> None:
        """Run ``cleanup`` (if given) on the loop, then stop the thread. Idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            if cleanup is not None:
                cleanup.close()
            return
        if cleanup is not None:
            try:
                asyncio.run_coroutine_threadsafe(cleanup, loop).result(5)
            except Exception:
                pass
        loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is not thread:
            thread.join(5)
