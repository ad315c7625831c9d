"""Sync workers: M OS threads running def tasks."""

from __future__ import annotations

import collections
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

#: Requests each thread may have waiting behind the one it runs. A thread that finishes a
#: task takes the next at once, instead of going idle until the consumer's loop has taken
#: its outcome in and handed over more: a round trip through that loop per task, and with
#: no-op tasks the whole cost of one (worker/lanes.py, docs/performance.md).
QUEUE_PER_THREAD = 3


class ThreadExecutor:
    """``count`` threads running requests taken from one pending deque.

    Hand-off: ``submit`` appends requests to ``_pending`` and wakes an idle thread (a token
    on the ``queue.SimpleQueue`` ``_wake``) unless one was woken and has not yet taken its
    request. A thread that takes a request while more are pending wakes the next idle one
    before running it. So a burst of short tasks costs a few wake-ups, mostly served by a
    thread that is already running, instead of one wake-up (a futex call and a GIL
    hand-off) per request; and since each thread takes one request at a time, a long task
    never holds back the others. ``_lock`` guards ``_pending``, ``_idle`` (threads waiting
    for a token, or about to), ``_woken`` (tokens not yet followed by a take),
    ``_running`` (thread ident -> request) and ``_retiring``.

    A thread stuck in a task past its hard time limit cannot be stopped from outside (we
    never inject exceptions into threads). ``abandon`` starts a replacement thread, so the
    worker keeps its capacity, and marks the stuck one: when its task finally returns, it
    exits instead of taking more work (its late outcome is ignored by the consumer).
    """

    def __init__(self, tracer: Tracer, on_done: DoneCallback, count: int) -> None:
        self.tracer = tracer
        self.on_done = on_done
        #: Requests handed over at most (running or waiting), and run at once.
        self.groups = [count * (1 + QUEUE_PER_THREAD)] if count > 0 else []
        self.starts = [count] if count > 0 else []
        self._wake: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._pending: collections.deque[_request.Request] = collections.deque()
        self._lock = threading.Lock()
        self._idle = count
        self._woken = 0
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
        if self.withdraw(req):  # it had not started: it never will
            return
        with self._lock:
            stuck = next((ident for ident, r in self._running.items() if r is req), None)
            if stuck is None or stuck in self._retiring:
                return  # it finished meanwhile, or was already replaced
            self._retiring.add(stuck)
            self._idle += 1  # the replacement, from its start
            wake = self._wake_one()
            name = f"sync-worker-{self._spawned}"
            self._spawned += 1
            thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._threads.append(thread)
        logger.warning("Replacing the sync worker thread running %s[%s] (%s); it exits when "
                       "the task returns", req.name, req.id, why)
        thread.start()
        if wake:
            self._wake.put(True)

    def withdraw(self, req: _request.Request) -> bool:
        """Take back a request no thread has taken yet (True); False if one has."""
        with self._lock:
            try:
                self._pending.remove(req)  # by identity: Request compares by identity
            except ValueError:
                return False
        return True

    def submit(self, group: int, requests: Sequence[_request.Request]) -> None:
        with self._lock:
            self._pending.extend(requests)
            wake = self._wake_one()
        if wake:
            self._wake.put(True)

    def _wake_one(self) -> bool:
        """Under ``_lock``: count an idle thread as woken when requests wait and no woken
        thread is on its way to take them; the caller then puts its token."""
        if self._pending and not self._woken and self._idle:
            self._woken += 1
            self._idle -= 1
            return True
        return False

    def _take(self, me: int, woken: bool) -> _request.Request | None:
        """The next pending request for thread ``me`` (None: it goes idle), waking the next
        idle thread when more wait."""
        with self._lock:
            if woken:
                self._woken -= 1
            if not self._pending:
                self._idle += 1
                return None
            req = self._pending.popleft()
            self._running[me] = req
            wake = self._wake_one()
        if wake:
            self._wake.put(True)
        return req

    def _run(self) -> None:
        run, done = self.tracer.run_sync, self.on_done
        me = threading.get_ident()
        while self._wake.get() is not _STOP:
            woken = True
            while (req := self._take(me, woken)) is not None:
                woken = False
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
                    # Abandoned (settled by the consumer already), others wait or others
                    # run (their results may come right after): not alone.
                    alone = not (retire or self._pending or self._running)
                done(outcome, alone)
                if retire:  # replaced while stuck: a fresh thread does our share now
                    return

    def cancel_all(self) -> list[_request.Request]:
        """Threads cannot be interrupted (the consumer requeues what they run); the requests
        no thread has taken are dropped and returned, so that none starts now."""
        with self._lock:
            dropped = list(self._pending)
            self._pending.clear()
        return dropped

    def stop(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._wake.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
