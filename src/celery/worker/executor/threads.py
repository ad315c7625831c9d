"""Sync workers: M OS threads running def tasks."""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import TypeAlias

from .. import request as _request
from ..tracer import Tracer
from .base import DoneCallback

__all__ = ["ThreadExecutor"]

logger = logging.getLogger("celery.worker.threads")

_STOP = None

#: A thread's wake-up queue: True (take pending requests) or _STOP.
_Wake: TypeAlias = "queue.SimpleQueue[bool | None]"

#: Requests each thread may have waiting behind the one it runs. A thread that finishes a
#: task takes the next at once, instead of going idle until the consumer's loop has taken
#: its outcome in and handed over more: a round trip through that loop per task, and with
#: no-op tasks the whole cost of one (worker/lanes.py, docs/performance.md).
QUEUE_PER_THREAD = 3


class ThreadExecutor:
    """``count`` threads running requests taken from one pending deque.

    Hand-off: ``submit`` appends requests to ``_pending`` and wakes an idle thread (a token
    on that thread's own ``queue.SimpleQueue``) unless one was woken and has not yet taken
    its request. A thread that takes a request while more are pending wakes the next idle one
    before running it. So a burst of short tasks costs a few wake-ups, mostly served by a
    thread that is already running, instead of one wake-up (a futex call and a GIL
    hand-off) per request; and since each thread takes one request at a time, a long task
    never holds back the others. The thread woken is the one that went idle last (``_idle``
    is a stack): tasks that come one at a time all run on one thread, whose memory is still
    in the CPU's caches, rather than on each thread in turn, as the waiters of one shared
    queue would be woken (with four threads, a lone ``def`` round trip 17 % shorter and 16 %
    less worker CPU, docs/performance.md). ``_lock`` guards ``_pending``, ``_idle`` (the
    wake-up queues of threads waiting for a token, or about to), ``_woken`` (tokens not yet
    followed by a take), ``_running`` (thread ident -> request), ``_retiring``,
    ``_threads``, ``_wakes``, ``_spawned``, ``size`` and ``_excess`` (``size`` is written
    only by ``resize``, on the consumer's loop thread, which alone reads it unlocked).

    Resizing (``resize``, consumer loop): growing starts threads that take pending requests
    at once; shrinking stops idle threads first (a ``_STOP`` token), and for the rest counts
    an ``_excess``: the next threads to come for a request after finishing their task exit
    instead, so no running task is interrupted and none is taken and then dropped. The
    check sits in ``_take``, under the lock it already holds: no cost per task.

    A thread stuck in a task past its hard time limit cannot be stopped from outside (we
    never inject exceptions into threads). ``abandon`` starts a replacement thread, so the
    worker keeps its capacity, and marks the stuck one: when its task finally returns, it
    exits instead of taking more work (its late outcome is ignored by the consumer).
    """

    def __init__(self, tracer: Tracer, on_done: DoneCallback, count: int) -> None:
        self.tracer = tracer
        self.on_done = on_done
        #: Requests handed over at most (running or waiting), and run at once.
        #: One group, even with no thread yet: ``resize`` may add some.
        self.groups = [count * (1 + QUEUE_PER_THREAD)]
        self.starts = [count]
        #: Threads wanted (not counting threads abandoned while stuck in a task).
        self.size = count
        #: Running threads still to exit after their task, to reach ``size`` (shrinking).
        self._excess = 0
        self._pending: collections.deque[_request.Request] = collections.deque()
        self._lock = threading.Lock()
        self._woken = 0
        self._running: dict[int, _request.Request] = {}
        self._retiring: set[int] = set()
        self._spawned = 0
        self._threads: list[threading.Thread] = []
        self._wakes: list[_Wake] = []  # each thread's wake-up queue, in _threads' order
        self._idle: list[_Wake] = []  # a stack: the last thread to go idle is woken first
        for _ in range(count):
            self._new_thread()

    def _new_thread(self) -> threading.Thread:
        """A new thread, idle once started (under ``_lock``, or before ``start``)."""
        wake: _Wake = queue.SimpleQueue()
        thread = threading.Thread(target=self._run, args=(wake,),
                                  name=f"sync-worker-{self._spawned}", daemon=True)
        self._spawned += 1
        self._threads.append(thread)
        self._wakes.append(wake)
        self._idle.insert(0, wake)  # woken after the threads that have run already
        return thread

    def start(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.start()

    def resize(self, count: int) -> None:
        """Run ``count`` threads from now on (consumer loop; the lane follows ``starts``).

        Growing starts new threads, which take pending requests at once; shrinking stops
        idle threads now and lets busy ones exit after their current task."""
        if count < 0:
            raise ValueError(f"a thread count cannot be negative ({count})")
        started: list[threading.Thread] = []
        stopped: list[_Wake] = []
        with self._lock:
            change, self.size = count - self.size, count
            if change > 0:
                kept = min(change, self._excess)  # threads due to exit stay instead
                self._excess -= kept
                started = [self._new_thread() for _ in range(change - kept)]
            elif change < 0:
                while change < 0 and self._idle:
                    stopped.append(self._idle.pop(0))  # the one idle longest first
                    change += 1
                self._excess -= change
            # In place: the consumer's lane reads these lists.
            self.groups[0] = count * (1 + QUEUE_PER_THREAD)
            self.starts[0] = count
            wake = self._wake_one()
        for w in stopped:
            w.put(_STOP)
        for thread in started:
            thread.start()
        if wake is not None:
            wake.put(True)

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
            thread = None
            if self._excess:  # shrinking anyway: this one leaves instead of a later one
                self._excess -= 1
            else:
                thread = self._new_thread()  # idle from its start
            wake = self._wake_one()
        logger.warning("Replacing the sync worker thread running %s[%s] (%s); it exits when "
                       "the task returns", req.name, req.id, why)
        if thread is not None:
            thread.start()
        if wake is not None:
            wake.put(True)

    def utilisation(self) -> tuple[int, int]:
        """(threads running a task, threads), not counting threads replaced while stuck in
        a task (``abandon``); any thread (the metrics read it on a scrape's thread)."""
        with self._lock:
            busy = sum(1 for ident in self._running if ident not in self._retiring)
            return busy, self.starts[0] if self.starts else 0

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
        if wake is not None:
            wake.put(True)

    def _wake_one(self) -> _Wake | None:
        """Under ``_lock``: take the idle thread that went idle last as woken when requests
        wait and no woken thread is on its way to take them; the caller then puts a token
        on the returned queue."""
        if self._pending and not self._woken and self._idle:
            self._woken += 1
            return self._idle.pop()
        return None

    def _take(self, me: int, wake: _Wake, woken: bool) -> _request.Request | bool:
        """The next pending request for thread ``me``, waking the next idle thread when
        more wait; else True: it goes idle, to be woken on ``wake``; or False: it exits
        (the pool shrinks)."""
        with self._lock:
            if woken:
                self._woken -= 1
            if self._excess:
                self._excess -= 1
                self._forget_thread(wake)
                other = self._wake_one()  # a token meant for us goes to another thread
                if other is not None:
                    other.put(True)
                return False
            if not self._pending:
                self._idle.append(wake)
                return True
            req = self._pending.popleft()
            self._running[me] = req
            other = self._wake_one()
        if other is not None:
            other.put(True)
        return req

    def _forget_thread(self, wake: _Wake) -> None:
        """Under ``_lock``: the thread of ``wake`` exits; ``stop`` no longer waits for it."""
        index = next(i for i, w in enumerate(self._wakes) if w is wake)
        del self._wakes[index], self._threads[index]

    def _run(self, wake: _Wake) -> None:
        try:
            self._serve(wake)
        finally:
            with self._lock:
                if any(w is wake for w in self._wakes):
                    self._forget_thread(wake)

    def _serve(self, wake: _Wake) -> None:
        run, done = self.tracer.run_sync, self.on_done
        me = threading.get_ident()
        while wake.get() is not _STOP:
            woken = True
            while not isinstance(req := self._take(me, wake, woken), bool):
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
            if req is False:  # the pool shrank
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
            threads, wakes = list(self._threads), list(self._wakes)
        for wake in wakes:
            wake.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
