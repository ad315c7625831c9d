"""Sync workers: M OS threads running def tasks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from .. import request as _request
from ..tracer import Tracer
from .base import DoneCallback

__all__ = ["ThreadExecutor"]

logger = logging.getLogger("celery.worker.threads")

_STOP = None


class ThreadExecutor:
    """``count`` threads taking requests from one ``queue.SimpleQueue`` (the hand-off from
    the consumer thread; thread-safe by contract, no GIL assumed).

    A thread stuck in a task past its hard time limit cannot be stopped from outside (we
    never inject exceptions into threads). ``abandon`` starts a replacement thread, so the
    worker keeps its capacity, and marks the stuck one: when its task finally returns, it
    exits instead of taking more work (its late outcome is ignored by the consumer). What
    ``_running`` (thread ident -> request) and ``_retiring`` hold is guarded by ``_lock``.
    """

    def __init__(self, tracer: Tracer, on_done: DoneCallback, count: int) -> None:
        self.tracer = tracer
        self.on_done = on_done
        self.groups = [count] if count > 0 else []
        self._queue: queue.SimpleQueue[_request.Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[int, _request.Request] = {}
        self._retiring: set[int] = set()
        self._spawned = count
        self._threads = [
            threading.Thread(target=self._run, name=f"sync-worker-{i}", daemon=True) for i in range(count)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def abandon(self, req: _request.Request, why: str) -> None:
        """Replace the thread running ``req`` (its hard time limit struck, or it was
        terminated): the old thread exits when the task returns."""
        with self._lock:
            stuck = next((ident for ident, r in self._running.items() if r is req), None)
            if stuck is None or stuck in self._retiring:
                return  # it finished meanwhile, or was already replaced
            self._retiring.add(stuck)
            name = f"sync-worker-{self._spawned}"
            self._spawned += 1
            thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._threads.append(thread)
        logger.warning("Replacing the sync worker thread running %s[%s] (%s); it exits when "
                       "the task returns", req.name, req.id, why)
        thread.start()

    def submit(self, group: int, requests: Sequence[_request.Request]) -> None:
        for req in requests:
            self._queue.put(req)

    def _run(self) -> None:
        get, run, done = self._queue.get, self.tracer.run_sync, self.on_done
        me = threading.get_ident()
        while True:
            req = get()
            if req is _STOP:
                return
            with self._lock:
                self._running[me] = req
            start = time.monotonic()
            try:
                outcome = run(req)
            except BaseException as exc:  # never let a request vanish without an outcome
                logger.exception("Internal error running %s[%s]", req.name, req.id)
                outcome = self.tracer._failed(req, exc, start, None)
            with self._lock:
                del self._running[me]
                retire = me in self._retiring
                self._retiring.discard(me)
            done(outcome)
            if retire:  # replaced while stuck: a fresh thread does our share now
                return

    def cancel_all(self) -> None:
        """Threads cannot be interrupted; the consumer requeues what they were running."""

    def stop(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
