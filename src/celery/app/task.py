"""Task and its request Context."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from .. import states
from .._state import current_request, current_task_var
from ..exceptions import (
    Ignore,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    Retry,
    SoftTimeLimitExceeded,
    Terminated,
)

if TYPE_CHECKING:
    from ..canvas import Signature
    from ..result import AsyncResult
    from .base import Celery

__all__ = ["Context", "Task"]

P = ParamSpec("P")
R = TypeVar("R")

_EMPTY_DELIVERY: dict[str, Any] = {}


class Context:
    """``task.request``: what the worker knows about the current execution.

    One instance per execution, made by the worker and reached through a contextvar, so
    concurrent async tasks on one loop each see their own.
    """

    id: str | None = None
    task: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = {}
    retries: int = 0
    is_eager: bool = False
    eta: str | None = None
    expires: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: Any = None
    chain: Any = None
    callbacks: Any = None
    errbacks: Any = None
    root_id: str | None = None
    parent_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = _EMPTY_DELIVERY
    timelimit: Any = None
    shadow: str | None = None
    ignore_result: bool = False
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    properties: dict[str, Any] | None = None
    headers: dict[str, Any] | None = None
    called_directly: bool = True
    acks_late: bool = False
    #: time.monotonic() past which ``Task.checkpoint()`` raises SoftTimeLimitExceeded.
    soft_deadline: float | None = None
    #: Set when the task is terminated (revoke with terminate): ``checkpoint()`` raises.
    halt: Any = None  # celery.worker.request.Halt: set()/is_set()

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)
        self.children: list[Any] = []

    @classmethod
    def of(cls, fields: dict[str, Any]) -> Context:
        """A Context whose attributes are ``fields`` (taken, not copied): the worker's way."""
        ctx = cls.__new__(cls)
        fields["children"] = []
        ctx.__dict__ = fields
        return ctx

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"<Context: {self.__dict__!r}>"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Task(Generic[P, R]):
    """A task type. ``@app.task`` makes a subclass per function and registers one instance.

    Task instances are shared by all threads: per-execution state is in ``self.request``
    (a contextvar), never on the instance.
    """

    name: str = ""
    _app: Celery | None = None
    typing: bool = True
    serializer: str | None = None
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    priority: int | None = None
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool | None = None
    acks_late: bool | None = None
    track_started: bool | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    expires: float | dt.datetime | None = None
    #: Automatic retries (Celery's names): exceptions that retry the task, those that never
    #: do, the retry() arguments, and exponential backoff with jitter.
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: int = 600
    retry_jitter: bool = True
    reject_on_worker_lost: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    MaxRetriesExceededError = MaxRetriesExceededError
    #: True when ``run`` is an ``async def``: it runs on a loop worker.
    is_async: bool = False
    _bound: bool = False

    # -- introspection -------------------------------------------------------------------

    @property
    def app(self) -> Celery:
        if self._app is None:
            from .._state import get_current_app

            return get_current_app()
        return self._app

    @property
    def request(self) -> Context:
        req = current_request.get()
        if req is not None and current_task_var.get() is self:
            return req
        return Context()

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:  # pragma: no cover - overridden
        raise NotImplementedError("Tasks must define the run method.")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the task function directly, in this process (no message is sent)."""
        return self.run(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.app.main}>"

    # -- sending -------------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task with these arguments; blocking, usable from any thread or loop."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task from the running event loop without blocking it."""
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task (Celery's options: countdown, eta, expires, queue, priority, ...)."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)  # type: ignore[return-value]
        return self.app.send_task(self.name, args, kwargs, task=self, **options)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``apply_async`` for the running event loop."""
        if self.app.conf.task_always_eager:
            return await self.aapply(args, kwargs, **options)  # type: ignore[no-any-return]
        return await self.app.asend_task(self.name, args, kwargs, task=self, **options)

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Run the task here and now (eager mode); returns an EagerResult.

        An ``async def`` task runs to completion on the app's portal loop (blocking the
        caller); from a running event loop, ``await task.aapply(...)`` instead.
        """
        req = self._eager_request(args, kwargs, options)
        token_t, token_r = current_task_var.set(self), current_request.set(req)
        try:
            value = self.run(*req.args, **req.kwargs)
            if inspect.isawaitable(value):
                value = self.app.portal.call(_await(value, self, req))
        except Retry as exc:
            if exc.sig is None:
                return self._eager_outcome(req, exc, options)
            return self.apply(exc.sig.args, exc.sig.kwargs, **_eager_retry(exc, req, options))
        except Exception as exc:
            return self._eager_outcome(req, exc, options)
        finally:
            current_request.reset(token_r)
            current_task_var.reset(token_t)
        return self._eager_outcome(req, value, options, ok=True)

    async def aapply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                     **options: Any) -> Any:
        """``apply`` for the running event loop: an ``async def`` task is awaited right here;
        a ``def`` task runs on the calling thread, as ``apply`` runs it."""
        req = self._eager_request(args, kwargs, options)
        token_t, token_r = current_task_var.set(self), current_request.set(req)
        try:
            value = self.run(*req.args, **req.kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Retry as exc:
            if exc.sig is None:
                return self._eager_outcome(req, exc, options)
            return await self.aapply(exc.sig.args, exc.sig.kwargs, **_eager_retry(exc, req, options))
        except Exception as exc:
            return self._eager_outcome(req, exc, options)
        finally:
            current_request.reset(token_r)
            current_task_var.reset(token_t)
        return self._eager_outcome(req, value, options, ok=True)

    def _eager_request(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
                       options: Mapping[str, Any]) -> Context:
        task_id = options.get("task_id") or str(uuid.uuid4())
        parent = current_request.get() if current_task_var.get() is not None else None
        return Context(
            id=task_id, task=self.name, args=list(args or ()), kwargs=dict(kwargs or {}),
            is_eager=True, called_directly=False, retries=options.get("retries", 0),
            root_id=(parent.root_id or parent.id) if parent is not None else task_id,
            parent_id=parent.id if parent is not None else None,
            delivery_info={"is_eager": True},
        )

    def _eager_outcome(self, req: Context, value: Any, options: Mapping[str, Any],
                       ok: bool = False) -> Any:
        """The EagerResult of an eager run (re-raising a failure if eager errors propagate);
        with ``task_store_eager_result`` the outcome is also stored in the result backend."""
        from ..result import EagerResult

        conf = self.app.conf
        tb = None
        if ok:
            state = states.SUCCESS
        else:
            if options.get("throw", conf.task_eager_propagates):
                raise value
            from ..utils.einfo import ExceptionInfo

            state = states.FAILURE
            tb = ExceptionInfo.of(value).traceback
        if conf.task_store_eager_result and not self.ignore_result:
            self.app.backend.store_result(req.id, value, state, tb, request=req)  # type: ignore[arg-type]
        return EagerResult(str(req.id), value, state, traceback=tb, name=self.name, app=self.app)

    # -- signatures and results ----------------------------------------------------------

    def signature(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> Signature:
        from ..canvas import Signature

        return Signature(self.name, args, kwargs, options, app=self._app)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs, immutable=True)

    subtask = signature

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:  # noqa: N802 - Celery's name
        from ..result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.name, **kwargs)

    # -- inside a running task -----------------------------------------------------------

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None,
                     **kwargs: Any) -> None:
        """Store a custom state (e.g. PROGRESS) for this or another task; blocking."""
        task_id = task_id or self.request.id
        if task_id is None:
            raise ImproperlyConfigured("update_state() needs a task_id outside of a running task")
        self.app.backend.store_result(task_id, meta, state or states.PENDING, request=self.request)

    async def aupdate_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None,
                            **kwargs: Any) -> None:
        """``update_state`` for async tasks."""
        task_id = task_id or self.request.id
        if task_id is None:
            raise ImproperlyConfigured("aupdate_state() needs a task_id outside of a running task")
        await self.app.backend.astore_result(task_id, meta, state or states.PENDING, request=self.request)

    def checkpoint(self) -> None:
        """A safe point where a ``def`` task may be interrupted: raises
        ``SoftTimeLimitExceeded`` once the task's soft time limit has passed, and
        ``Terminated`` once it was revoked with ``terminate=True``.

        Threads cannot be interrupted safely from outside (we never use
        ``PyThreadState_SetAsyncExc``), so a long ``def`` task that wants its soft limit calls
        this now and then (e.g. once per loop iteration). ``async def`` tasks need not: their
        soft limit cancels them at their current ``await``.
        """
        request = self.request
        if request.halt is not None and request.halt.is_set():
            raise Terminated(f"{self.name}[{request.id}] was terminated (revoked)")
        deadline = request.soft_deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise SoftTimeLimitExceeded(f"soft time limit exceeded in {self.name}[{self.request.id}]")

    def retry(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              exc: BaseException | None = None, throw: bool = True,
              eta: dt.datetime | None = None, countdown: float | None = None,
              max_retries: int | None = None, **options: Any) -> Retry:
        """Retry this task later: ``raise self.retry(exc=exc, countdown=60)``.

        As in Celery: the retry is the same task id with ``retries + 1``, sent to the same
        queue with the same priority, after ``countdown`` seconds (``default_retry_delay``
        when neither ``countdown`` nor ``eta`` is given). Past ``max_retries`` (the task's,
        unless given here) ``exc`` is raised if given, else ``MaxRetriesExceededError``.
        Called outside a worker (the task called directly) it raises ``exc`` (or Retry).

        Inside a worker the retry message is sent by the worker when the Retry exception
        reaches it (so an ``async def`` task never blocks its event loop on a publish); with
        ``throw=False`` it is sent here, at once. In eager mode the retry runs at once, in
        this process, when ``apply()`` sees the Retry.
        """
        request = self.request
        retries = request.retries + 1
        max_retries = self.max_retries if max_retries is None else max_retries
        if request.called_directly:
            raise exc or Retry("Task can be retried", None)
        if not eta and countdown is None:
            countdown = self.default_retry_delay
        args = request.args if args is None else args
        kwargs = request.kwargs if kwargs is None else kwargs
        if max_retries is not None and retries > max_retries:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{tuple(args)} kwargs:{dict(kwargs)}",
                task_args=args, task_kwargs=kwargs)
        opts = self._retry_options(request, retries, countdown, eta, options)
        ret = Retry(exc=exc, when=eta or countdown, is_eager=request.is_eager,
                    sig=self.signature(args, kwargs, **opts))
        if request.is_eager:
            if throw:
                raise ret
            return ret
        message, _ = self.app._prepare(self.name, args, kwargs, self, dict(opts))
        if throw:
            ret.message_to_send = message
            raise ret
        self.app.transport.publish(message)
        return ret

    def _retry_options(self, request: Context, retries: int, countdown: float | None,
                       eta: dt.datetime | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Send options that make a message a retry of ``request`` (Celery's
        ``signature_from_request``): same id, ids of the family, limits, queue and priority."""
        delivery_info = request.delivery_info or {}
        timelimit = request.timelimit or (None, None)
        opts: dict[str, Any] = {
            "task_id": request.id, "root_id": request.root_id, "parent_id": request.parent_id,
            "group_id": request.group, "group_index": request.group_index,
            "chord": request.chord, "chain": request.chain,
            "link": request.callbacks, "link_error": request.errbacks,
            "expires": request.expires, "retries": retries,
            "time_limit": timelimit[0], "soft_time_limit": timelimit[1],
            "ignore_result": request.ignore_result, "shadow": request.shadow,
        }
        if delivery_info.get("priority") is not None:
            opts["priority"] = delivery_info["priority"]
        if delivery_info.get("routing_key"):
            opts["queue"] = delivery_info["routing_key"]
        if delivery_info.get("exchange"):
            opts["exchange"] = delivery_info["exchange"]
        if eta is not None:
            opts["eta"] = eta
        else:
            opts["countdown"] = countdown
        opts.update(extra)
        return opts


def _backoff(task: Task, retries: int) -> float:
    """Celery's exponential backoff for autoretry: factor * 2**retries seconds, at most
    ``retry_backoff_max``, with full jitter (a random share of it) unless turned off."""
    factor = max(1.0, float(task.retry_backoff))
    delay = min(float(task.retry_backoff_max), factor * (2 ** retries))
    if task.retry_jitter:
        delay = random.randrange(int(delay) + 1)
    return max(0.0, delay)


def add_autoretry(task: Task) -> None:
    """Wrap ``task.run`` so that the exceptions in ``autoretry_for`` retry the task (with
    ``retry_kwargs``, and backoff when ``retry_backoff`` is set); ``def`` and ``async def``."""
    autoretry_for = tuple(task.autoretry_for or ())
    if not autoretry_for or getattr(task, "_orig_run", None) is not None:
        return
    dont = tuple(task.dont_autoretry_for or ())
    run = task.run

    def retry_for(exc: Exception) -> Retry:
        options = dict(task.retry_kwargs or {})
        if task.retry_backoff:
            options["countdown"] = _backoff(task, task.request.retries)
        return task.retry(exc=exc, **options)

    def retry_or_raise(exc: Exception) -> NoReturn:
        if isinstance(exc, (Ignore, Retry, *dont)) or not isinstance(exc, autoretry_for):
            raise exc
        raise retry_for(exc) from None

    if inspect.iscoroutinefunction(run):
        @functools.wraps(run)
        async def arun(*args: Any, **kwargs: Any) -> Any:
            try:
                return await run(*args, **kwargs)
            except Exception as exc:
                retry_or_raise(exc)

        task._orig_run, task.run = run, arun  # type: ignore[attr-defined,method-assign]
    else:
        @functools.wraps(run)
        def srun(*args: Any, **kwargs: Any) -> Any:
            try:
                return run(*args, **kwargs)
            except Exception as exc:
                retry_or_raise(exc)

        task._orig_run, task.run = run, srun  # type: ignore[attr-defined,method-assign]


def _eager_retry(exc: Retry, req: Context, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options for running an eager retry at once (as Celery: the countdown is not waited)."""
    return {**options, "task_id": req.id, "retries": req.retries + 1}


async def _await(value: Any, task: Task, req: Context) -> Any:
    # The portal loop has its own context: the task and its request are set again there.
    current_task_var.set(task)
    current_request.set(req)
    return await value
