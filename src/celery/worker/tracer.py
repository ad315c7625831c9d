"""Run one task: decode, set the request context, call, build the result to store.

The states a run can end in, as in Celery:

* SUCCESS: the return value is stored.
* FAILURE: the exception and its traceback are stored (also when results are ignored, if the
  task has ``store_errors_even_if_ignored``).
* RETRY: the task called ``self.retry()``. The RETRY state with the reason is stored first,
  on the task's thread or loop, then the retry message (same task id, ``retries + 1``, its
  ETA) is published, and the message is acked. Stored the other way round (as Celery does),
  a retry due at once could run and store its FAILURE or SUCCESS before this run's RETRY,
  which then overwrote it (seen with ``retry_jitter`` picking a countdown of 0): the caller
  waited for a result that was never coming. With ``track_started``, that store first waits
  (up to ``STARTED_WAIT`` seconds) until the consumer has written this run's STARTED, which
  would otherwise land after the RETRY (and reach an ``rpc://`` caller after it). If that
  store fails, the RETRY state goes with the outcome, as any result; if publishing fails,
  the task is marked FAILURE with that error.
* IGNORED (``raise Ignore()``): nothing is stored; the message is acked.
* REJECTED (``raise Reject(reason, requeue=...)``): nothing is stored; the message is rejected
  (dropped) or requeued.

Signals (``celery.signals``) are sent on the thread that runs the task: task_prerun,
task_postrun, task_success, task_failure, task_retry.

What a task's end sets off besides its result (its callbacks and chain, its chord, its
errbacks: ``canvas/followups.py``; the task class's ``on_success``/``on_failure``/
``on_retry``/``after_return`` handlers, and ``before_start``) is one duty per outcome
(``_success``, ``_failure``, ``_retry``), run by ``drive`` on a sync worker thread and by
``adrive`` on a loop worker, so that ``def`` and ``async def`` tasks behave the same. On
success the callbacks are sent before the result is encoded (so its ``children`` list
them, as in Celery); if sending one fails, the task fails with that error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import signals, states
from .._state import current_request, current_task_var
from ..app import trace
from ..app.handlers import before_start_call, handler_calls, overridden_handlers
from ..app.task import Context
from ..canvas.effects import Duty, adrive, drive
from ..canvas.followups import after_end, after_success
from ..exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from ..messaging.protocol import TaskBody, decode_body, saferepr
from ..utils.einfo import ExceptionInfo
from .canvas import PendingReport
from .request import Outcome, Request

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..backends.base import ResultBackend
    from ..transport.base import Transport

__all__ = ["Tracer"]

#: Longest repr of a result in a ``task-succeeded`` event (Celery's ``Task.resultrepr_maxsize``).
RESULTREPR_MAXSIZE = 1024
#: Seconds a retrying task waits for its STARTED to be written before storing RETRY (a
#: backend failing then: the RETRY is stored anyway, and the STARTED may land after it).
STARTED_WAIT = 5.0

# Celery's name for the task execution log lines (logging configurations, and integrations
# such as sentry-sdk's, refer to it).
logger = logging.getLogger("celery.app.trace")


class Tracer:
    """Executes requests; immutable after construction, so shared by all executor threads.

    ``run_sync`` is called on a sync worker thread, ``run_async`` is awaited on a loop
    worker's event loop. Both return an Outcome and never raise for task errors.
    ``interim`` (set by the worker) takes outcomes that only store a state (STARTED) while
    the task goes on; it is thread-safe (the consumer's outbox).
    """

    def __init__(self, backend: ResultBackend, hostname: str, accept: frozenset[str],
                 transport: Transport | None = None, track_started: bool = False,
                 *, app: Celery) -> None:
        self.app = app
        self.backend = backend
        self.hostname = hostname
        self.accept = accept
        self.transport = transport
        self.track_started = track_started
        self.interim: Callable[[Outcome], None] | None = None
        self._log_info = logger.isEnabledFor(logging.INFO)
        #: Task events are on (worker/events.py writes it on the consumer's loop; executor
        #: threads read it): outcomes then carry their event's fields.
        self.event_fields = False
        #: Sends a task event from any thread (worker/events.py: through the consumer
        #: loop's ``call_soon_threadsafe``, in call order); set with ``event_fields``.
        self.send_event: Callable[..., None] | None = None

    def _begin(self, req: Request, start: float) -> tuple[TaskBody, Context] | Outcome:
        """Decode the body and build the request context; a FAILURE Outcome if it won't decode."""
        msg = req.delivery.message
        try:
            body = decode_body(msg.body, msg.content_type, msg.content_encoding, self.accept,
                               msg.headers.get("compression"))
        except Exception as exc:  # one line says it all: the traceback would be ours
            logger.error("Task %s[%s] cannot run: its message body is invalid: %s", req.name,
                         req.id, exc)
            failed = self._failed(req, exc, start, None, logged=True)
            # Rejected, not acked, once the failure is stored: an acks_late message goes to
            # the queue's dead-letter exchange where it has one (an early ack came already).
            failed.settle = "reject"
            return failed
        ctx = req.context(body.args, body.kwargs, body.embed, self.hostname)
        ctx.halt = req.halt
        soft = req.limits[1]
        if soft is not None:
            ctx.soft_deadline = start + soft
        return body, ctx

    def _started(self, req: Request, body: TaskBody, ctx: Context) -> None:
        """``task_prerun`` and the STARTED state, once ``task.request`` is this execution's
        (as Celery sends it: receivers such as OpenTelemetry's read the request there)."""
        task = req.task
        if signals.task_prerun.receivers:
            signals.task_prerun.send(sender=task, task_id=req.id, task=task, args=body.args,
                                     kwargs=body.kwargs)
        track = task.track_started if task.track_started is not None else self.track_started
        if track and req.store_result and self.interim is not None:
            meta = self.backend.prepare_meta(
                req.id, states.STARTED, {"pid": os.getpid(), "hostname": self.hostname}, None, ctx)
            req.started_written = concurrent.futures.Future()
            self.interim(Outcome(req, states.STARTED, self.backend.encode(meta), 0.0, interim=True,
                                 written=req.started_written))

    def run_sync(self, req: Request) -> Outcome:
        start = time.monotonic()
        begun = self._begin(req, start)
        if isinstance(begun, Outcome):
            return begun
        body, ctx = begun
        hooked = trace.hooked_tracer(req.task, self.hostname)
        if hooked is None:
            return self._run_sync(req, body, ctx, start)
        return self._run_hooked(hooked, req, body, ctx, start)

    def _run_hooked(self, hooked: trace.TraceFn, req: Request, body: TaskBody, ctx: Context,
                    start: float) -> Outcome:
        """Run the execution inside the tracer an integration built (app/trace.py). Its own
        failure never loses the task's outcome: logged, and the execution runs (or counts)
        without it."""
        entered: list[bool] = []
        done: list[Outcome] = []

        def execution() -> Outcome:
            entered.append(True)
            done.append(self._run_sync(req, body, ctx, start))
            return done[0]

        try:
            trace.run_traced(hooked, req.id, body.args, body.kwargs, ctx, execution)
        except Exception as exc:
            if entered and not done:
                raise  # ours, from inside the execution: never run the task twice
            logger.error("Task %s[%s]: the tracer %r (celery.app.trace.build_tracer) raised: "
                         "%r", req.name, req.id, hooked, exc)
        return done[0] if done else self._run_sync(req, body, ctx, start)

    def _run_sync(self, req: Request, body: TaskBody, ctx: Context, start: float) -> Outcome:
        task = req.task
        t_task, t_req = current_task_var.set(task), current_request.set(ctx)
        app = self.app
        try:
            self._started(req, body, ctx)
            try:
                if "before_start" in overridden_handlers(type(task)):
                    drive(before_start_call(task, ctx), app)
                value = task.run(*body.args, **body.kwargs)
                self._confirm_own()
            except Retry as exc:
                if not req.halt.claim("thread"):  # a cold shutdown requeued its message
                    return self._dropped(req, start)
                error, stored = None, False
                self._retry_event(req, exc)
                if exc.message_to_send is not None and self.transport is not None:
                    stored = self._store_retry(req, exc, ctx)
                    try:
                        self.transport.publish(exc.message_to_send)
                        self._confirm_own()
                    except Exception as publish_error:
                        error = publish_error
                return self._end(req, body, drive(
                    self._retry(req, exc, error, start, ctx, stored), app))
            except Exception as exc:
                if req.halt.is_set():  # terminated: settled as REVOKED already; quietly done
                    logger.info("Task %s[%s] stopped after it was terminated (%r)", req.name,
                                req.id, exc)
                    return Outcome(req, states.REVOKED, None, time.monotonic() - start)
                if not req.halt.claim("thread"):
                    return self._dropped(req, start)
                return self._end(req, body, drive(self._error(req, exc, start, ctx), app))
            if not req.halt.claim("thread"):
                return self._dropped(req, start)
            return self._end(req, body, drive(self._success(req, value, start, ctx), app), value)
        finally:
            self._confirm_own(quietly=True)  # a task that raised: its refusals are not the next's
            current_request.reset(t_req)
            current_task_var.reset(t_task)

    async def run_async(self, req: Request) -> Outcome:
        # Runs inside its own asyncio.Task, whose context is a copy: the contextvars set
        # here are seen by this task alone, however many run concurrently on the loop.
        start = time.monotonic()
        begun = self._begin(req, start)
        if isinstance(begun, Outcome):
            return begun
        body, ctx = begun
        task, app = req.task, self.app
        current_task_var.set(task)
        current_request.set(ctx)
        self._started(req, body, ctx)
        soft = _SoftLimit(req.limits[1])
        try:
            if "before_start" in overridden_handlers(type(task)):
                await adrive(before_start_call(task, ctx), app)
            value = await task.run(*body.args, **body.kwargs)
            self._confirm_own()  # sync delay() calls inside: blocks this loop while it waits
        except asyncio.CancelledError:
            if not soft.fired:
                raise  # a cold shutdown (or the hard limit): not ours to handle
            exc = SoftTimeLimitExceeded(f"soft time limit ({req.limits[1]}s) exceeded")
            soft.disarm()
            return self._end(req, body, await adrive(self._failure(req, exc, start, ctx), app))
        except Retry as exc:
            error, stored = None, False
            self._retry_event(req, exc)
            if exc.message_to_send is not None and self.transport is not None:
                stored = await self._astore_retry(req, exc, ctx)
                try:
                    await self.transport.apublish(exc.message_to_send)
                except Exception as publish_error:
                    error = publish_error
            outcome = await adrive(self._retry(req, exc, error, start, ctx, stored), app)
            return self._end(req, body, outcome)
        except Exception as exc:
            return self._end(req, body, await adrive(self._error(req, exc, start, ctx), app))
        finally:
            soft.disarm()
            self._confirm_own(quietly=True)
        return self._end(req, body, await adrive(self._success(req, value, start, ctx), app), value)

    def _dropped(self, req: Request, start: float) -> Outcome:
        """The end of a sync task whose message a cold shutdown requeued while it ran
        (``Halt.claim``): nothing is reported, the consumer ignores the outcome."""
        logger.warning("Task %s[%s] ended after a cold shutdown requeued its message: its "
                       "outcome is dropped", req.name, req.id)
        return Outcome(req, states.REVOKED, None, time.monotonic() - start, requeue=True)

    def _confirm_own(self, quietly: bool = False) -> None:
        """Wait for Redis's replies to the sync publishes this task made (pipelined, see
        transport/redis_publish.py), so that a message Redis refused fails the task that sent
        it, as a confirmed publish would have raised inside it. At once if it made none.
        ``quietly`` (a task that failed or retried anyway): the refusal, logged when its
        reply was read, is dropped rather than left for the next task of this thread."""
        confirm = getattr(self.transport, "confirm_own_published", None)
        if confirm is None:
            return
        try:
            confirm()
        except Exception:
            if not quietly:
                raise

    def _end(self, req: Request, body: TaskBody, outcome: Outcome, value: Any = None) -> Outcome:
        if signals.task_postrun.receivers:
            signals.task_postrun.send(sender=req.task, task_id=req.id, task=req.task,
                                      args=body.args, kwargs=body.kwargs, retval=value,
                                      state=outcome.state)
        return outcome

    # -- duties: what an outcome sets off (run by drive or adrive) ----------------------------

    def _success(self, req: Request, value: Any, start: float, ctx: Context) -> Duty[Outcome]:
        if ctx.callbacks or ctx.chain:
            try:
                yield from after_success(self.app, ctx, value)  # type: ignore[arg-type]
            except Exception as exc:  # a callback or the chain's next step was not sent
                logger.error("Task %s[%s]: its callbacks could not be sent: %r", req.name, req.id,
                             exc)
                return (yield from self._failure(req, exc, start, ctx))
        outcome = self._succeeded(req, value, start, ctx)
        if outcome.state != states.SUCCESS:  # the value could not be encoded
            return (yield from self._ended(req, ctx, outcome, outcome.einfo.exception))
        return (yield from self._ended(req, ctx, outcome, value))

    def _error(self, req: Request, exc: Exception, start: float, ctx: Context) -> Duty[Outcome]:
        """A task that raised: Ignore, Reject (nothing more happens), or a failure."""
        if isinstance(exc, Ignore | Reject):
            return self._errored(req, exc, start, ctx)
        return (yield from self._failure(req, exc, start, ctx))

    def _failure(self, req: Request, exc: BaseException, start: float,
                 ctx: Context) -> Duty[Outcome]:
        outcome = self._failed(req, exc, start, ctx)
        return (yield from self._ended(req, ctx, outcome, exc))

    def _retry(self, req: Request, exc: Retry, publish_error: Exception | None, start: float,
               ctx: Context, stored: bool = False) -> Duty[Outcome]:
        outcome = self._retried(req, exc, publish_error, start, ctx, stored)
        if outcome.state == states.FAILURE:  # the retry could not be sent
            return (yield from self._ended(req, ctx, outcome, publish_error))
        handlers = overridden_handlers(type(req.task))
        if "on_retry" in handlers:
            reason = exc.exc if exc.exc is not None else exc
            yield from handler_calls(req.task, handlers, ctx, states.RETRY, reason,
                                     ExceptionInfo.of(exc))
        return outcome

    def _ended(self, req: Request, ctx: Context, outcome: Outcome, value: Any) -> Duty[Outcome]:
        """SUCCESS or FAILURE: the canvas's follow-ups, then the task's handlers.

        A chord member's report goes with the outcome (``chord_report``): the consumer makes
        it once the result is stored and before the message is acked (worker/canvas.py).
        """
        state = outcome.state
        einfo = outcome.einfo
        if ctx.chord:
            outcome.chord_report = PendingReport(ctx, state, value)  # in this task's context
        if state == states.FAILURE and (ctx.chain or ctx.errbacks):
            try:
                yield from after_end(self.app, ctx, state, value,
                                     einfo.traceback if einfo is not None else None,
                                     chord=False)
            except Exception as exc:  # after_end logs what it expects; this is the net
                logger.exception("Task %s[%s]: its canvas follow-ups failed: %r", req.name,
                                 req.id, exc)
        handlers = overridden_handlers(type(req.task))
        if handlers:
            yield from handler_calls(req.task, handlers, ctx, state, value, einfo)
        return outcome

    # -- outcomes --------------------------------------------------------------------------

    def _succeeded(self, req: Request, value: Any, start: float, ctx: Any) -> Outcome:
        runtime = time.monotonic() - start
        if self._log_info:
            logger.info("Task %s[%s] succeeded in %.6fs: %.200r", req.name, req.id, runtime, value)
        payload = None
        if req.store_result:
            try:
                payload = self.backend.encode(
                    self.backend.prepare_meta(req.id, states.SUCCESS, value, None, ctx))
            except Exception as exc:  # the return value could not be serialized
                logger.error("Task %s[%s] returned a value that cannot be stored: %r",
                             req.name, req.id, exc)
                return self._failed(req, exc, start, ctx)
        if signals.task_success.receivers:
            signals.task_success.send(sender=req.task, result=value)
        outcome = Outcome(req, states.SUCCESS, payload, runtime)
        if self.event_fields:
            maxsize = getattr(req.task, "resultrepr_maxsize", None) or RESULTREPR_MAXSIZE
            outcome.event_fields = {"result": saferepr(value, maxsize)}
        return outcome

    def _errored(self, req: Request, exc: Exception, start: float, ctx: Any) -> Outcome:
        """The Outcome of a task that raised: Ignore, Reject, or a failure."""
        runtime = time.monotonic() - start
        if isinstance(exc, Ignore):
            if self._log_info:
                logger.info("Task %s[%s] ignored", req.name, req.id)
            return Outcome(req, states.IGNORED, None, runtime)
        if isinstance(exc, Reject):
            logger.warning("Task %s[%s] rejected: %r (requeue=%s)", req.name, req.id,
                           exc.reason, exc.requeue)
            settle = "requeue" if exc.requeue else "reject"
            return Outcome(req, states.REJECTED, None, runtime, settle=settle)
        return self._failed(req, exc, start, ctx)

    def _retry_payload(self, req: Request, exc: Retry, ctx: Any) -> bytes | None:
        """The RETRY meta to store, encoded; None when this task stores none."""
        if not (req.store_result or req.task.store_errors_even_if_ignored):
            return None
        reason = exc.exc if exc.exc is not None else exc
        return self._encode_error(req, states.RETRY, reason, ExceptionInfo.of(exc).traceback, ctx)

    def _store_retry(self, req: Request, exc: Retry, ctx: Any) -> bool:
        """Store the RETRY state now, blocking this task's thread, before its retry is sent
        (see the module docstring); False if there is none or the write failed (it goes
        with the outcome then)."""
        payload = self._retry_payload(req, exc, ctx)
        if payload is None:
            return False
        if req.started_written is not None:  # RETRY must not land before this run's STARTED
            with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
                req.started_written.result(STARTED_WAIT)
        try:
            if not self.backend.store_now(req.id, payload, states.RETRY):
                self.backend._call(self.backend._aset_many([(req.id, payload, states.RETRY)]))
        except Exception as error:  # the outcome carries it to the flusher, which retries
            logger.warning("Task %s[%s]: could not store RETRY before sending the retry (%r)",
                           req.name, req.id, error)
            return False
        return True

    async def _astore_retry(self, req: Request, exc: Retry, ctx: Any) -> bool:
        """``_store_retry`` on an async task's loop."""
        payload = self._retry_payload(req, exc, ctx)
        if payload is None:
            return False
        if req.started_written is not None:  # as in _store_retry, without blocking the loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(req.started_written)),
                                       STARTED_WAIT)
        try:
            await self.backend._aset_many([(req.id, payload, states.RETRY)])
        except Exception as error:
            logger.warning("Task %s[%s]: could not store RETRY before sending the retry (%r)",
                           req.name, req.id, error)
            return False
        return True

    def _retried(self, req: Request, exc: Retry, publish_error: Exception | None, start: float,
                 ctx: Any, stored: bool = False) -> Outcome:
        """RETRY once the retry message is out (its state stored already if ``stored``);
        FAILURE if it could not be sent."""
        if publish_error is not None:
            logger.error("Task %s[%s]: could not send its retry (%r); marking it failed",
                         req.name, req.id, publish_error)
            return self._failed(req, publish_error, start, ctx)
        runtime = time.monotonic() - start
        einfo = ExceptionInfo.of(exc)
        logger.info("Task %s[%s] retry: %s", req.name, req.id, exc)
        payload = None if stored else self._retry_payload(req, exc, ctx)
        if signals.task_retry.receivers:
            signals.task_retry.send(sender=req.task, request=ctx, reason=exc,
                                    einfo=einfo.for_signal())
        return Outcome(req, states.RETRY, payload, runtime)

    def _retry_event(self, req: Request, exc: Retry) -> None:
        """``task-retried``, sent before the retry's message is: a worker that takes that
        message sends ``task-received`` after it, so monitors see the retry first (the
        consumer would see this outcome only after the new run may have ended)."""
        send = self.send_event
        if self.event_fields and send is not None:
            reason = exc.exc if exc.exc is not None else exc
            send("task-retried", req, exception=saferepr(reason),
                 traceback=ExceptionInfo.of(exc).traceback)

    def _failed(self, req: Request, exc: BaseException, start: float, ctx: Any,
                logged: bool = False) -> Outcome:
        runtime = time.monotonic() - start
        einfo = ExceptionInfo.of(exc)
        if not logged:
            logger.error("Task %s[%s] raised unexpected: %r\n%s", req.name, req.id, exc,
                         einfo.traceback)
        payload = None
        if req.store_result or req.task.store_errors_even_if_ignored:
            payload = self._encode_error(req, states.FAILURE, exc, einfo.traceback, ctx)
        if signals.task_failure.receivers:
            signals.task_failure.send(sender=req.task, task_id=req.id, exception=exc,
                                      args=getattr(ctx, "args", None),
                                      kwargs=getattr(ctx, "kwargs", None),
                                      traceback=exc.__traceback__, einfo=einfo.for_signal())
        outcome = Outcome(req, states.FAILURE, payload, runtime, einfo=einfo)
        if self.event_fields:
            outcome.event_fields = {"exception": saferepr(exc), "traceback": einfo.traceback}
        return outcome

    def _encode_error(self, req: Request, state: str, exc: BaseException, tb: str | None,
                      ctx: Any) -> bytes:
        meta = self.backend.prepare_meta(req.id, state, exc, tb, ctx)
        try:
            return self.backend.encode(meta)
        except Exception:  # an exception whose arguments cannot be serialized
            meta["result"] = self.backend.prepare_exception(Exception(repr(exc)))
            return self.backend.encode(meta)


class _SoftLimit:
    """An async task's soft time limit: at ``seconds`` it cancels the running asyncio.Task
    (the task sees CancelledError at its current await and may clean up). Loop-bound."""

    def __init__(self, seconds: float | None) -> None:
        self.fired = False
        self._handle: asyncio.TimerHandle | None = None
        if seconds is not None:
            self._task = asyncio.current_task()
            self._handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self.fired = True
        if self._task is not None:
            self._task.cancel("soft time limit exceeded")

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self.fired and self._task is not None:
            self._task.uncancel()  # handled here: the task goes on to report its outcome
