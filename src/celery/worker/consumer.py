"""The consumer: fetch within the prefetch window, dispatch to executors, batch acks and
result writes. Everything here runs on the worker's main event loop."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import signals, states
from ..backends.base import DisabledBackend
from ..exceptions import (
    ConnectionLost,
    ContentDisallowed,
    InvalidMessage,
    NotRegistered,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from ..messaging.protocol import check_headers
from ..messaging.serialization import accept_set
from ..transport.base import CAP_DELAYED, CAP_EARLY, EARLY_ACKED, EARLY_ALONE, EARLY_KEPT
from .canvas import ConsumerCanvas
from .duties import every, restore_interval
from .executor.base import Executor
from .flusher import Flusher
from .handoff import HandoffPause
from .lanes import Lane
from .outbox import Outbox
from .ratelimit import RateLimits
from .request import Outcome, Request
from .results import ResultGate
from .state import RevokedIds, resident_kb

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..transport.base import Delivery, Transport
    from .events import WorkerEvents

__all__ = ["Consumer"]

logger = logging.getLogger("celery.worker.consumer")

#: Upper bound on messages fetched in one round trip.
FETCH_BATCH_MAX = 256
#: How long one fetch may block when the queues are empty (also how quickly a stop is seen).
FETCH_TIMEOUT = 1.0
#: How often deferred (far-ETA) messages that are due are put back in their queues.
PROMOTE_INTERVAL = 1.0
#: At least this many future (ETA) tasks are held in memory before they are deferred.
ETA_HOLD_MAX = 10_000


class Consumer:
    """Owns the broker side of a worker.

    Must be created and run on the worker's main event loop; executors report back only
    through ``self.outbox``, whose hand-off is thread-safe.
    """

    def __init__(self, app: Celery, transport: Transport, queues: Sequence[str], window: int,
                 loop_executor: Executor, sync_executor: Executor, hostname: str,
                 on_ready: Callable[[], Any] | None = None, max_tasks: int | None = None,
                 max_memory_kb: int | None = None, state_db: str | None = None,
                 *, events: WorkerEvents) -> None:
        self.app = app
        self.transport = transport
        self.backend = app.backend
        self.queues = list(queues)
        self.window = window
        self.hostname = hostname
        self.on_ready = on_ready
        self.tasks = app.tasks
        self.lanes = {True: Lane(loop_executor), False: Lane(sync_executor)}
        self.accept = accept_set(app.conf.accept_content)
        self._store_results = not isinstance(self.backend, DisabledBackend)
        self._task_defaults = tuple(app.conf[f"task_{name}"] for name in (
            "acks_late", "ignore_result", "time_limit", "soft_time_limit"))
        #: Requests accepted and not finished (held or running).
        self.inflight = 0
        #: Deliveries fetched whose ack/requeue/reject the broker has not confirmed yet. The
        #: window bounds both counts, so the broker never holds more unacked messages for
        #: us than the window, even while acks are in flight.
        self.reserved = 0
        self._room = asyncio.Event()
        #: Set once a stop is asked for; never cleared.
        self._stopped = asyncio.Event()
        self._idle = asyncio.Event()
        #: Requests whose ETA has not come: (eta epoch, seq, request), a heap. They are not
        #: counted in ``reserved`` while held (as Celery raises its QoS for them), so a
        #: backlog of future tasks never blocks the window; ``eta_held`` counts them.
        self._eta: list[tuple[float, int, Request]] = []
        self._eta_seq = itertools.count()
        self._eta_timer: asyncio.TimerHandle | None = None
        #: The transport's QoS hook (AMQP): told the window plus the ETA messages held, as
        #: Celery raises its prefetch count for them, so held ones never block the window.
        self._set_prefetch: Callable[[int], None] | None = getattr(transport, "set_prefetch", None)
        self._eta_held = 0
        # A transport that can ``defer`` takes far-future messages off our hands (Redis:
        # a sorted set; see docs/brokers.md): we hold a message only while its ETA is within
        # ``eta_horizon`` (half the visibility timeout, so that no restore ever redelivers a
        # message we hold) and while we hold fewer than ``eta_hold_max``.
        self._defer = getattr(transport, "defer", None)
        self._promote = getattr(transport, "promote_due", None)
        visibility = getattr(transport, "visibility_timeout", None)
        if CAP_DELAYED not in transport.capabilities and visibility:
            self.eta_horizon = max(1.0, float(visibility) / 2)
        else:
            self.eta_horizon = float("inf")
        self.eta_hold_max = max(ETA_HOLD_MAX, window)
        #: Rate-limited tasks' waiting requests (released into their lanes).
        self._limits = RateLimits(app.conf.task_default_rate_limit,
                                  lambda req: self.lanes[req.task.is_async].held.append(req),
                                  self._limit_due)
        self._rate_limits = not app.conf.worker_disable_rate_limits
        self.outbox: Outbox[Outcome] = Outbox(asyncio.get_running_loop(), self._on_outcomes)
        #: Results on their way to the flusher; executors post through ``results.hand_over``.
        self.results = ResultGate(self.backend)
        #: Chord reports, and the canvas follow-ups of requests settled here, not run.
        self.canvas = ConsumerCanvas(app, hostname, self.accept)
        #: Result writes, chord reports and settles, batched (worker/flusher.py).
        self.flusher = Flusher(self.backend, transport, self.results, self._settled,
                               self._room.set, lambda: self.inflight > 0,
                               self.canvas.run_reports)
        self._log_info = logger.isEnabledFor(logging.INFO)
        self.processed = 0
        #: Recycling (``--max-tasks-per-child``, ``--max-memory-per-child``): past either
        #: limit the consumer stops as in a warm shutdown and ``recycle`` tells the worker to
        #: exit for its supervisor to start a fresh process.
        self.max_tasks = max_tasks or None
        self.max_memory_kb = max_memory_kb or None
        self._next_memory_check = 0.0
        self.recycle = False
        #: Revoked task ids (never started when they arrive; ``--statedb`` keeps them).
        self.revoked = RevokedIds(state_db)
        #: Tasks finished, by name (``inspect stats``).
        self.total: dict[str, int] = {}
        self.started_at = time.time()
        self._handoff = HandoffPause()  # the next fetch's pause after an early hand-off
        #: Task and worker events, and metrics (worker/events.py); each hook tests
        #: ``task_events`` first.
        self.events = events

    @property
    def eta_held(self) -> int:
        """Requests held in memory until their ETA (not counted in the window)."""
        return self._eta_held

    @eta_held.setter
    def eta_held(self, count: int) -> None:
        self._eta_held = count
        if self._set_prefetch is not None:
            self._set_prefetch(self.window + count)

    def event_counts(self) -> tuple[int, int]:
        """``(active, processed)`` for worker events: requests running, tasks finished."""
        return sum(len(lane.running) for lane in self.lanes.values()), self.processed

    # -- main coroutine ------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop_fetching`` is called, then finish the in-flight work."""
        flusher = asyncio.create_task(self.flusher.run(), name="consumer-flush")
        restorer = asyncio.create_task(self._restore_loop(), name="consumer-restore")
        promoter = asyncio.create_task(self._promote_loop(), name="consumer-promote")
        watcher = asyncio.create_task(self._memory_loop(), name="consumer-memory")
        try:
            await self.transport.declare(self.queues)
            if self._set_prefetch is not None:
                self._set_prefetch(self.window + self.eta_held)
            if self.on_ready is not None:
                self.on_ready()
            await self._fetch_loop()
        finally:
            # The restorer stops at the stop event, never by cancellation: a restore cut off
            # mid-way would hold kombu's unacked_mutex until it expires.
            self.stop_fetching()
            await self._stop_consuming()
            await asyncio.wait({restorer, promoter, watcher}, timeout=30)  # bounded, never raises
            self._requeue_held()
            await self._wait_idle()
            await self.canvas.drain(timeout=10)
            self.flusher.needed.set()
            await self.flusher.drain(flusher)

    async def _fetch_loop(self) -> None:
        backoff = 0.1
        early = {"early": self._take_early} if CAP_EARLY in self.transport.capabilities else {}
        while not self.stopping:
            want = min(self.window - max(self.inflight, self.reserved), FETCH_BATCH_MAX)
            if self.max_tasks is not None:  # never take more than this process will run
                want = min(want, self.max_tasks - self.processed - self.inflight - self.eta_held)
            if want <= 0 or self.flusher.backlogged():
                self._room.clear()
                await self._room.wait()
                continue
            if not self.queues:  # every queue cancelled by remote control
                await asyncio.sleep(FETCH_TIMEOUT)
                continue
            try:
                deliveries = await self.transport.fetch(self.queues, want, FETCH_TIMEOUT, **early)
            except ConnectionLost as exc:
                logger.warning("Broker connection lost: %s. Retrying in %.1fs...", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if self._handoff.pending:  # let the task just handed over start first
                await self._handoff.wait()
            self.reserved += len(deliveries)
            for delivery in deliveries:
                self._accept(delivery)
            self._dispatch()

    async def _stop_consuming(self) -> None:
        """Tell a transport that prefetches (AMQP) to stop, so that the messages it holds and
        never handed over go back to their queues now, not when the connection closes."""
        stop = getattr(self.transport, "stop_consuming", None)
        if stop is None:
            return
        try:
            returned = await stop()
        except ConnectionLost as exc:  # the broker requeues them when the connection ends
            logger.warning("Could not return prefetched messages: %s", exc)
            return
        if returned:
            logger.info("Returned %d prefetched message(s) to the broker", returned)

    def _take_early(self, delivery: Delivery) -> int:
        """A message the transport hands over before recording it as reserved (CAP_EARLY:
        Redis, right after a blocking pop): accept and dispatch it now. True if that acked it
        on the spot (it started at once and acks early, or was revoked or expired): the
        transport then never records it, so no ack is sent for it either. EARLY_ALONE when
        it is then the only task here: the transport need not look for a backlog."""
        # Posted outcomes first: a result its thread wrote (results.py) may not have woken us.
        self.outbox.drain()
        self.reserved += 1
        self._accept(delivery)
        self._dispatch()
        acks = self.flusher.acks
        for i in range(len(acks) - 1, -1, -1):
            if acks[i] is delivery:
                del acks[i]
                self.reserved -= 1
                # An otherwise idle worker lets the task start before fetching again.
                alone = self.inflight == 1
                self._handoff.pending = alone
                return EARLY_ALONE if alone else EARLY_ACKED
        return EARLY_KEPT

    @property
    def stopping(self) -> bool:
        """True once a warm or cold stop was asked for."""
        return self._stopped.is_set()

    def stop_fetching(self) -> None:
        """Warm shutdown: stop taking new messages (the current fetch ends within 1 s)."""
        self._stopped.set()
        self._room.set()

    def cold_stop(self) -> None:
        """Second signal: stop at once. Async tasks are cancelled (their messages go back,
        as they report); a sync thread cannot be, so a ``def`` task still running is
        abandoned: its message goes back now and whatever it does afterwards is dropped
        (``Halt.claim``), so it is never both requeued and reported. One that returned just
        before keeps its outcome (finish and ack). The worker then exits without waiting
        for abandoned threads (daemons, they end with the process)."""
        self.stop_fetching()
        lane = self.lanes[False]
        for req in lane.cancel():  # waiting for a thread: never started nor acked
            self.inflight -= 1
            self.flusher.requeues.append(req.delivery)
        sync_running = list(lane.running)
        self.lanes[True].executor.cancel_all()
        for req in sync_running:
            if not req.halt.claim("consumer"):
                continue  # it just ended: its outcome is on its way and settles it
            logger.warning("Cold shutdown: requeueing %s[%s], still running in a sync thread "
                           "(abandoned: its outcome will be dropped)", req.name, req.id)
            self._finish(Outcome(req, "REVOKED", None, 0.0, requeue=True))
        self.flusher.needed.set()
        if self.inflight == 0:
            self._idle.set()

    # -- receiving -----------------------------------------------------------------------

    def _accept(self, delivery: Delivery) -> None:
        msg = delivery.message
        try:
            name, task_id = check_headers(msg.headers)
        except InvalidMessage as exc:
            logger.error("Rejecting malformed message from queue %r: %s", delivery.queue, exc)
            self._reject(delivery)
            signals.task_rejected.send(sender=self, message=msg, exc=exc)
            return
        task = self.tasks.get(name)
        if task is None:
            logger.error("Received unregistered task of type %r (id %s): the message has been "
                         "rejected and discarded. Is the module that defines it imported by the "
                         "worker?", name, task_id)
            self._reject(delivery)
            if self.events.task_events:
                self.events.unknown(name, task_id)
            signals.task_unknown.send(sender=self, name=name, id=task_id, message=msg,
                                      exc=NotRegistered(name))
            return
        if msg.content_type not in self.accept:
            logger.error("Rejecting task %s[%s]: content type %r is not in accept_content (%s)",
                         name, task_id, msg.content_type, ", ".join(sorted(self.accept)))
            self._reject(delivery)
            signals.task_rejected.send(sender=self, message=msg, exc=ContentDisallowed(
                f"content type {msg.content_type!r} is not accepted"))
            return
        lane = self.lanes[task.is_async]
        if not lane.used:
            kind = "loop workers" if task.is_async else "sync workers"
            logger.error("Rejecting task %s[%s]: this worker runs no %s", name, task_id, kind)
            self._reject(delivery)
            return
        acks_late, ignore, hard, soft = self._task_defaults  # read once, as Celery does
        acks_late = acks_late if task.acks_late is None else task.acks_late
        ignore = msg.headers.get("ignore_result") or (
            ignore if task.ignore_result is None else task.ignore_result)
        req = Request(delivery, task, name, task_id, bool(acks_late), self._store_results and not ignore)
        req.limits = req.time_limits(hard, soft)
        if self._log_info:
            logger.info("Task %s[%s] received", name, task_id)
        if self.events.task_events:
            self.events.received(req)
        if signals.task_received.receivers:
            signals.task_received.send(sender=self, request=req)
        if self._discarded(req):
            return
        eta = req.header_time("eta")
        if eta is not None and eta > time.time():
            far = eta - time.time() > self.eta_horizon or self.eta_held >= self.eta_hold_max
            if far and self._defer is not None:
                self.flusher.defers.append((delivery, eta))
                self.flusher.needed.set()
            else:
                if far:
                    logger.warning("Task %s[%s]: holding its ETA beyond the visibility timeout's "
                                   "horizon (this broker cannot defer messages)", name, task_id)
                self._hold_until(req, eta)
            return
        self._enqueue(req)

    def _enqueue(self, req: Request) -> None:
        """Accept a request for running: into its lane, or its rate limiter's queue."""
        self.inflight += 1
        limiter = self._limits.limiter_for(req) if self._rate_limits else None
        if limiter is None:
            self.lanes[req.task.is_async].held.append(req)
        else:
            limiter.waiting.append(req)
            self._limits.pump(not self.stopping)

    def _limit_due(self) -> None:
        self._limits.pump(not self.stopping)
        self._dispatch()

    # -- ETA and expiry ----------------------------------------------------------------------

    def _hold_until(self, req: Request, eta: float) -> None:
        """Keep a request whose ETA is in the future, unacked, until then."""
        self.reserved -= 1
        self.eta_held += 1
        heapq.heappush(self._eta, (eta, next(self._eta_seq), req))
        if self._eta[0][2] is req:
            self._arm_eta_timer()

    def _arm_eta_timer(self) -> None:
        if self._eta_timer is not None:
            self._eta_timer.cancel()
            self._eta_timer = None
        if self._eta and not self.stopping:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._eta[0][0] - time.time())
            self._eta_timer = loop.call_at(loop.time() + delay, self._eta_due)

    def _eta_due(self) -> None:
        self._eta_timer = None
        now = time.time()
        while self._eta and self._eta[0][0] <= now:
            _, _, req = heapq.heappop(self._eta)
            self.eta_held -= 1
            self.reserved += 1
            if self._discarded(req):
                continue
            self._enqueue(req)
        self._arm_eta_timer()
        self._dispatch()

    def _discarded(self, req: Request) -> bool:
        """A request not yet started that must never run: revoked, or past its ``expires``.
        It is marked REVOKED (stored, acked, ``task_revoked`` sent); True if so."""
        if req.id in self.revoked:
            logger.info("Discarding revoked task %s[%s]", req.name, req.id)
            self._announce_revoked(req, "revoked", expired=False)
            return True
        expires = req.header_time("expires")
        if expires is None or expires > time.time():
            return False
        logger.warning("Task %s[%s] expired: discarded, marked REVOKED", req.name, req.id)
        self._announce_revoked(req, "expired", expired=True)
        return True

    def _revoked_payload(self, req: Request, reason: str) -> bytes | None:
        """The encoded REVOKED meta (``TaskRevokedError(reason)``) to store, or None."""
        if not req.store_result:
            return None
        meta = self.backend.prepare_meta(req.id, states.REVOKED, TaskRevokedError(reason),
                                         None, req.bare_context())
        return self.backend.encode(meta)

    def _announce_revoked(self, req: Request, reason: str, expired: bool) -> None:
        payload = self._revoked_payload(req, reason)
        report = self.canvas.ended(req, states.REVOKED, TaskRevokedError(reason))
        self._store_then(req, payload, states.REVOKED, "acks", report)
        self.flusher.needed.set()
        if self.events.task_events:
            self.events.task("task-revoked", req, terminated=False, signum=None, expired=expired)
        if signals.task_revoked.receivers:
            signals.task_revoked.send(sender=req.task, request=req, terminated=False, signum=None,
                                      expired=expired)

    def _reject(self, delivery: Delivery) -> None:
        self.flusher.rejects.append(delivery)
        self.flusher.needed.set()

    def _dispatch(self) -> None:
        if self.stopping:
            # Shutting down: nothing new starts; what is held goes back to the queue.
            self._requeue_held()
            return
        for lane in self.lanes.values():
            groups = lane.executor.groups
            while lane.held:
                group = max(range(len(groups)), key=lambda g: groups[g] - lane.used[g], default=None)
                if group is None:
                    break
                free = groups[group] - lane.used[group]
                if free <= 0:
                    break
                batch: list[Request] = []
                while lane.held and len(batch) < free:
                    req = lane.held.popleft()
                    if self._discarded(req):  # revoked or expired while it waited
                        self.inflight -= 1
                        continue
                    batch.append(req)
                if not batch:
                    continue
                lane.hand_over(group, batch, self._start)
        if self.flusher.acks:
            self.flusher.needed.set()
        if self.inflight == 0:
            self._idle.set()

    def _start(self, req: Request) -> None:
        """A request starts (for us; its executor may have started it a moment before)."""
        req.started_at = time.time()
        if not req.acks_late:
            self.flusher.acks.append(req.delivery)
        if self.events.task_events:
            self.events.task("task-started", req)
        if req.limits[0] is not None:
            req.watchdog = asyncio.get_running_loop().call_later(
                req.limits[0], self._time_limit_hit, req)

    # -- completions (loop thread, via the outbox) -----------------------------------------

    def _on_outcomes(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self._finish(outcome)
        # Each payload came counted (results.hand_over) and is queued, counted again, or
        # dropped by now: uncounted only after, so that the gate never reads 0 meanwhile.
        self.results.done(sum(o.payload is not None for o in outcomes))
        if self.max_tasks is not None and self.processed >= self.max_tasks:
            self._recycle(f"it ran {self.processed} tasks (max tasks per child)")
        if self.max_memory_kb is not None and time.monotonic() >= self._next_memory_check:
            self._next_memory_check = time.monotonic() + 0.1  # at most 10 reads a second
            self._check_memory()
        self._dispatch()
        # The flusher wakes before the fetch loop: results are written before the next
        # fetch's script runs (woken for the loop's next turn in this order; see _flush_loop);
        # not for nothing (a lone task's result was written on its thread).
        if self.flusher.waiting():
            self.flusher.needed.set()
        self._handoff.release()
        if self.inflight < self.window:
            self._room.set()
        if self.inflight == 0:
            self._idle.set()

    def _store_then(self, req: Request, payload: bytes | None, state: str,
                    settle: str | None, report: Any = None) -> None:
        """Queue the result (if any), the chord report (if any) and the settle
        (``"acks"``/``"rejects"``, or None) of a request: the report waits until the result
        is written, the settle until both are."""
        then = (settle, req.delivery) if settle else None
        if payload is not None:
            self.flusher.store(req.id, payload, state, then, report)
        elif report is not None:
            self.flusher.report(report, then)
        elif then is not None:
            getattr(self.flusher, then[0]).append(then[1])

    def _settled(self, count: int) -> None:
        """The broker confirmed ``count`` acks, requeues, rejects or deferrals (flusher)."""
        self.reserved -= count
        self._room.set()

    def _finish(self, outcome: Outcome) -> None:
        req = outcome.request
        if outcome.interim:  # a state to store while the task goes on (STARTED)
            if outcome.payload is not None:
                self.flusher.store(req.id, outcome.payload, outcome.state,
                                   written=outcome.written)
            return
        lane = self.lanes[req.task.is_async]
        if lane.running.pop(req, False) is False:
            return  # already settled (cold shutdown requeued it, or its hard limit struck)
        if req.watchdog is not None:
            req.watchdog.cancel()
        if not lane.settle(req, self._start) and not req.acks_late:
            self.flusher.acks.append(req.delivery)  # settled before it started: never acked
        self.inflight -= 1
        if outcome.requeue:  # cancelled by a cold shutdown: the worker is lost to it
            if req.acks_late and self._task_option(req, "reject_on_worker_lost") is False:
                self._lost_and_acked(req)
            else:
                self._give_back(req)
            return
        self.processed += 1
        self.total[req.name] = self.total.get(req.name, 0) + 1
        if self.events.task_events:
            self.events.task_outcome(outcome)
        settle = None  # acks_late: settled once the result is written
        if outcome.settle == "requeue":  # raise Reject(requeue=True)
            self._give_back(req)
        elif outcome.settle == "reject":  # raise Reject(): dropped (acked already if early)
            settle = "rejects" if req.acks_late else None
        elif req.acks_late:
            if outcome.state == states.FAILURE and not self._acks_on_failure(req):
                settle = "rejects"  # task_acks_on_failure_or_timeout=False
            else:
                settle = "acks"
        self._store_then(req, outcome.payload, outcome.state, settle, outcome.chord_report)

    def _time_limit_hit(self, req: Request) -> None:
        """The hard time limit struck a running request: fail it with TimeLimitExceeded and
        finish it as any outcome (settled, slot freed), and have its executor let go of it
        (an async task is cancelled; a stuck sync thread is replaced, see
        ThreadExecutor.abandon). Its own late outcome is then ignored by ``_finish``."""
        if req not in self.lanes[req.task.is_async].running:
            return
        hard = req.limits[0]
        logger.error("Task %s[%s]: hard time limit (%ss) exceeded", req.name, req.id, hard)
        exc = TimeLimitExceeded(hard)
        payload = None
        if req.store_result or req.task.store_errors_even_if_ignored:
            meta = self.backend.prepare_meta(req.id, states.FAILURE, exc, None,
                                             req.bare_context())
            payload = self.backend.encode(meta)
        # As Celery, with acks_late: acked, or requeued if acks_on_failure_or_timeout is off.
        settle = "requeue" if req.acks_late and not self._acks_on_failure(req) else "ack"
        self.lanes[req.task.is_async].executor.abandon(req, "hard time limit exceeded")
        if signals.task_failure.receivers:
            signals.task_failure.send(sender=req.task, task_id=req.id, exception=exc, args=None,
                                      kwargs=None, traceback=None, einfo=None)
        outcome = Outcome(req, states.FAILURE, payload, float(hard or 0), settle=settle)
        outcome.event_fields = {"exception": repr(exc), "traceback": None}
        outcome.chord_report = self.canvas.ended(req, states.FAILURE, exc)
        self._on_outcomes([self.results.hand_over(outcome, False)])

    # -- remote control (worker/control.py calls these on this loop) -------------------------

    def revoke(self, task_ids: Sequence[str], terminate: bool = False,
               signum: int | None = None) -> list[str]:
        """Remember ``task_ids`` as revoked and discard those waiting here (in a lane, a rate
        limiter or the ETA heap); with ``terminate`` stop those running. The ids terminated."""
        self.revoked.add(task_ids)
        wanted = set(task_ids)
        for lane in self.lanes.values():
            lane.held = self._without_revoked(lane.held, wanted)
            for req in lane.withdraw(wanted):  # waiting in the executor, not started
                self.inflight -= 1
                self._discarded(req)
        for limiter in self._limits.by_name.values():
            if limiter is not None:
                limiter.waiting = self._without_revoked(limiter.waiting, wanted)
        held = [entry for entry in self._eta if entry[2].id in wanted]
        if held:
            self._eta = [entry for entry in self._eta if entry[2].id not in wanted]
            heapq.heapify(self._eta)
            for _, _, req in held:
                self.eta_held -= 1
                self.reserved += 1  # back in the window until its ack is flushed
                self._discarded(req)
            self._arm_eta_timer()
        terminated = []
        if terminate:
            for lane in self.lanes.values():
                for req in [r for r in lane.running if r.id in wanted]:
                    self._terminate(req, signum)
                    terminated.append(req.id)
        self._dispatch()
        if self.inflight < self.window:
            self._room.set()
        return terminated

    def _without_revoked(self, waiting: deque[Request], wanted: set[str]) -> deque[Request]:
        kept: deque[Request] = deque()
        for req in waiting:
            if req.id in wanted and self._discarded(req):
                self.inflight -= 1
            else:
                kept.append(req)
        return kept

    def _terminate(self, req: Request, signum: int | None) -> None:
        """Stop a running request (``revoke(terminate=True)``): marked REVOKED, settled and
        its slot freed now. An async task is cancelled at its current await; a sync one is
        asked to stop (``Task.checkpoint()`` raises ``Terminated``) and its thread replaced
        (``ThreadExecutor.abandon``); its own late outcome is then ignored by ``_finish``."""
        logger.warning("Terminating task %s[%s] (signal %s)", req.name, req.id, signum)
        payload = self._revoked_payload(req, "terminated")
        req.halt.set()
        self.lanes[req.task.is_async].executor.abandon(req, "terminated")
        if self.events.task_events:
            self.events.task("task-revoked", req, terminated=True, signum=signum, expired=False)
        if signals.task_revoked.receivers:
            signals.task_revoked.send(sender=req.task, request=req, terminated=True, signum=signum,
                                      expired=False)
        outcome = Outcome(req, states.REVOKED, payload, 0.0, settle="ack")
        outcome.chord_report = self.canvas.ended(req, states.REVOKED,
                                                 TaskRevokedError("terminated"))
        self._on_outcomes([self.results.hand_over(outcome, False)])

    def resized(self, window: int) -> None:
        """An executor was resized (worker/pool.py): fetch within ``window`` from now on,
        start for us the waiting requests that new threads take, and hand over more."""
        self.window = window
        self.eta_hold_max = max(ETA_HOLD_MAX, window)
        if self._set_prefetch is not None:
            self._set_prefetch(window + self.eta_held)
        for lane in self.lanes.values():
            lane.rebalance(self._start)
        self._dispatch()
        self._room.set()

    def reset_rate_limit(self, name: str) -> None:
        """The task's ``rate_limit`` changed: rebuild its limiter, keeping who waits."""
        old = self._limits.by_name.pop(name, None)
        waiting = old.waiting if old is not None else deque()
        if not waiting:
            return
        new = self._limits.limiter_for(waiting[0]) if self._rate_limits else None
        if new is None:
            self.lanes[waiting[0].task.is_async].held.extend(waiting)
        else:
            new.waiting.extend(waiting)
        self._limits.pump(not self.stopping)
        self._dispatch()

    def requests(self) -> dict[str, list[Request]]:
        """Requests by where they are: ``active`` (running), ``reserved`` (waiting for a
        slot, a thread or a rate-limit token) and ``scheduled`` (held for their ETA)."""
        active = [r for lane in self.lanes.values() for r in lane.active()]
        reserved = [r for lane in self.lanes.values() for r in (*lane.unstarted, *lane.held)]
        reserved += self._limits.waiting()
        return {"active": active, "reserved": reserved,
                "scheduled": [req for _, _, req in sorted(self._eta, key=lambda e: e[:2])]}

    async def add_queue(self, queue: str) -> bool:
        """Start consuming ``queue`` too (declared first); False if it already was."""
        if queue in self.queues:
            return False
        await self.transport.declare([queue])
        self.queues = [*self.queues, queue]
        return True

    def cancel_queue(self, queue: str) -> bool:
        """Stop consuming ``queue`` (the current fetch ends within FETCH_TIMEOUT)."""
        found = queue in self.queues
        self.queues = [q for q in self.queues if q != queue]
        return found

    def _task_option(self, req: Request, name: str) -> Any:
        """The task's option ``name``, else the ``task_<name>`` setting when it is None."""
        value = getattr(req.task, name, None)
        return self.app.conf[f"task_{name}"] if value is None else value

    def _lost_and_acked(self, req: Request) -> None:
        """Celery's ``reject_on_worker_lost=False`` (set explicitly) for an ``acks_late`` task
        a cold shutdown cut off: it fails with ``WorkerLostError`` and its message is acked,
        so it never runs again. Unset (None) or True, the message is requeued instead."""
        logger.warning("Task %s[%s]: worker lost (cold shutdown); failed and acked, as "
                       "reject_on_worker_lost is False", req.name, req.id)
        exc = WorkerLostError(f"Worker exited prematurely: cold shutdown ({req.name}[{req.id}])")
        payload = None
        if req.store_result or req.task.store_errors_even_if_ignored:
            meta = self.backend.prepare_meta(req.id, states.FAILURE, exc, None,
                                             req.bare_context())
            payload = self.backend.encode(meta)
        report = self.canvas.ended(req, states.FAILURE, exc)
        self._store_then(req, payload, states.FAILURE, "acks", report)

    def _acks_on_failure(self, req: Request) -> bool:
        return bool(self._task_option(req, "acks_on_failure_or_timeout"))

    def _give_back(self, req: Request) -> None:
        """Return a message whose execution was abandoned (cold shutdown, or a task that
        raised ``Reject(requeue=True)``) to its queue.

        A message still reserved at the broker (acks_late, or an early ack not yet sent) is
        requeued; one whose early ack may already have reached the broker is published again,
        so that an acknowledged message is never lost.
        """
        delivery, flusher = req.delivery, self.flusher
        if req.acks_late or not req.started_at:  # not started: its early ack never queued
            flusher.requeues.append(delivery)
            return
        try:
            flusher.acks.remove(delivery)
        except ValueError:
            flusher.republishes.append(delivery)
        else:
            flusher.requeues.append(delivery)

    def _requeue_held(self) -> None:
        for lane in self.lanes.values():  # in their order: waiting in the executor, then held
            for req in [*lane.withdraw(), *lane.held]:
                self.inflight -= 1
                self.flusher.requeues.append(req.delivery)
            lane.held.clear()
        self._limits.cancel()
        for limiter in self._limits.by_name.values():
            while limiter is not None and limiter.waiting:
                self.inflight -= 1
                self.flusher.requeues.append(limiter.waiting.popleft().delivery)
        if self._eta_timer is not None:
            self._eta_timer.cancel()
            self._eta_timer = None
        while self._eta:  # future tasks go back unacked, to be fetched after a restart
            _, _, req = heapq.heappop(self._eta)
            self.eta_held -= 1
            self.reserved += 1
            self.flusher.requeues.append(req.delivery)
        if self.flusher.requeues:
            logger.info("Requeued %d prefetched messages that had not started",
                        len(self.flusher.requeues))
            self.flusher.needed.set()
        if self.inflight == 0:
            self._idle.set()

    async def _wait_idle(self) -> None:
        while self.inflight > 0:
            self._idle.clear()
            await self._idle.wait()

    def _recycle(self, why: str) -> None:
        if not self.recycle and not self.stopping:
            logger.warning("Recycling this worker process: %s", why)
            self.recycle = True
            self.stop_fetching()

    def _check_memory(self) -> None:
        rss = resident_kb()
        if rss is not None and self.max_memory_kb is not None and rss > self.max_memory_kb:
            self._recycle(f"it uses {rss} KiB (max memory per child {self.max_memory_kb})")

    async def _memory_loop(self) -> None:
        """Recycle the process once its resident memory passes the limit: checked as tasks
        finish (at most 10 times a second) and, for growth between tasks, every second."""
        if self.max_memory_kb is None:
            return

        async def check() -> None:
            self._check_memory()

        await every(1.0, check, "memory check", self._stopped)

    async def _promote_loop(self) -> None:
        """Every PROMOTE_INTERVAL, put deferred messages that are due back in their queues."""
        if self._promote is not None:
            await every(PROMOTE_INTERVAL, self._promote, "promote_due", self._stopped)

    async def _restore_loop(self) -> None:
        """Now (a worker that starts gives back what dead ones left at once), then every
        quarter of the visibility timeout (``duties.restore_interval``)."""
        async def restore() -> None:
            restored = await self.transport.restore_visible()
            if restored:
                logger.warning("Restored %d unacknowledged messages of a worker that is gone",
                               restored)

        interval = restore_interval(getattr(self.transport, "visibility_timeout", None))
        await every(interval, restore, "restore_visible", self._stopped)

