"""Task and its request Context."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from .. import states
from .._state import Context, current_request, current_task_var
from ..exceptions import (
    Ignore,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    Retry,
    SoftTimeLimitExceeded,
    Terminated,
)
from . import eager

if TYPE_CHECKING:
    from ..canvas import Signature
    from ..result import AsyncResult
    from .base import Celery

__all__ = ["Context", "Task"]


P = ParamSpec("P")
R = TypeVar("R")

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
    #: Longest repr of a result in a ``task-succeeded`` event (``-E``).
    resultrepr_maxsize: int = 1024
    max_retries: int | None = 3
    default_retry_delay: float = 180
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    expires: float | dt.datetime | None = None
    #: The worker sends this task's events when task events are on (``-E``); False: never.
    send_events: bool = True
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

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run the task here and now (eager mode); returns an EagerResult.

        An ``async def`` task runs to completion on the app's portal loop (blocking the
        caller); from a running event loop, ``await task.aapply(...)`` instead. As in a
        worker, its callbacks, chain and errbacks are applied (eagerly) and its handlers
        called (app/eager.py).
        """
        return eager.apply(self, args, kwargs, options)

    async def aapply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                     **options: Any) -> Any:
        """``apply`` for the running event loop: an ``async def`` task is awaited right here;
        a ``def`` task runs on the calling thread, as ``apply`` runs it."""
        return await eager.aapply(self, args, kwargs, options)

    # -- handlers (a Task subclass overrides those it needs) -------------------------------

    def before_start(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Called by the worker before the task runs."""

    def on_success(self, retval: Any, task_id: str, args: Sequence[Any],
                   kwargs: Mapping[str, Any]) -> None:
        """Called by the worker when the task succeeded."""

    def on_failure(self, exc: BaseException, task_id: str, args: Sequence[Any],
                   kwargs: Mapping[str, Any], einfo: Any) -> None:
        """Called by the worker when the task failed (``einfo``: ExceptionInfo)."""

    def on_retry(self, exc: BaseException, task_id: str, args: Sequence[Any],
                 kwargs: Mapping[str, Any], einfo: Any) -> None:
        """Called by the worker when the task is to be retried."""

    def after_return(self, status: str, retval: Any, task_id: str, args: Sequence[Any],
                     kwargs: Mapping[str, Any], einfo: Any) -> None:
        """Called by the worker after the task succeeded or failed."""

    # -- signatures and results ----------------------------------------------------------

    def signature(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                  **options: Any) -> Signature:
        from ..canvas import Signature

        immutable = bool(options.pop("immutable", False))
        return Signature(self, args, kwargs, options, immutable=immutable, app=self._app)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs, immutable=True)

    subtask = signature

    def chunks(self, it: Iterable[Any], n: int) -> Any:
        """The items in parts of ``n``, each part one task (``[self(*x) for x in part]``)."""
        from ..canvas import chunks

        return chunks(self.s(), it, n, app=self.app)

    def map(self, it: Iterable[Any]) -> Any:
        """One task computing ``[self(x) for x in it]``."""
        from ..canvas import xmap

        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> Any:
        """One task computing ``[self(*x) for x in it]``."""
        from ..canvas import xstarmap

        return xstarmap(self.s(), it, app=self.app)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:  # noqa: N802 - Celery's name
        from ..result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.name, **kwargs)

    @property
    def backend(self) -> Any:
        """The app's result backend."""
        return self.app.backend

    # -- inside a running task -----------------------------------------------------------

    def replace(self, sig: Any) -> NoReturn:
        """Replace this running task with ``sig`` (a task or a whole canvas).

        ``sig`` takes over this task's id, callbacks, errbacks, chord membership and the
        rest of its chain, and is sent; this task ends here without a result of its own
        (``raise self.replace(sig)`` or plain ``self.replace(sig)``: it raises Ignore). A
        group is followed by ``celery.accumulate`` so that the callers get the list of its
        results. Blocking: an ``async def`` task awaits ``self.areplace(sig)`` instead.
        """
        sig = self._replacement(sig)
        if self.request.is_eager:
            raise eager.EagerReplaced(sig.apply().get())
        sig.delay()
        raise Ignore("Replaced by new task")

    async def areplace(self, sig: Any) -> NoReturn:
        """``replace`` for an ``async def`` task: sends without blocking its event loop."""
        sig = self._replacement(sig)
        if self.request.is_eager:
            raise eager.EagerReplaced((await sig.aapply()).get())
        await sig.adelay()
        raise Ignore("Replaced by new task")

    def _replacement(self, sig: Any) -> Any:
        from ..canvas import group, signature
        from ..canvas.chains import _chain

        request = self.request
        if "chord" in sig.options:
            raise ImproperlyConfigured("A signature replacing a task must not be part of a chord")
        if isinstance(sig, _chain) and not sig.tasks:
            raise ImproperlyConfigured("Cannot replace with an empty chain")
        accumulate = self.app.tasks["celery.accumulate"]
        if isinstance(sig, group):
            sig = sig | accumulate.s(index=0)
        if isinstance(sig, _chain) and isinstance(sig.tasks[-1], group):
            sig.tasks = [*sig.tasks[:-1], sig.tasks[-1] | accumulate.s(index=0)]
        for callback in request.callbacks or ():
            sig.link(callback)
        for errback in request.errbacks or ():
            sig.link_error(errback)
        if isinstance(sig, _chain) and "link" in sig.options:
            sig.tasks[-1].extend_list_option("link", sig.options.pop("link"))
        sig.freeze(request.id)
        nesting = int((request.headers or {}).get("replaced_task_nesting") or 0) + 1
        sig.set(chord=request.chord, group_id=request.group, group_index=request.group_index,
                root_id=request.root_id, replaced_task_nesting=nesting)
        if isinstance(sig, _chain):
            for step in sig.tasks:
                step.set(replaced_task_nesting=nesting)
        for step in reversed(request.chain or ()):
            sig |= signature(step, app=self.app).set(replaced_task_nesting=nesting)
        return sig

    def add_to_chord(self, sig: Any, lazy: bool = False) -> Any:
        """Add ``sig`` to the chord this task is a header member of: the chord's body then
        also waits for it (and gets its result). Sends it now unless ``lazy`` (then it is
        returned, frozen, to be sent later). Needs a backend with its own chord join."""
        request = self.request
        if not request.chord:
            raise ValueError("Current task is not member of any chord")
        sig.set(group_id=request.group, group_index=request.group_index, chord=request.chord,
                root_id=request.root_id)
        sig.freeze()
        self.app.backend.add_to_chord(str(request.group))
        return sig if lazy else sig.delay()

    def add_trail(self, result: Any) -> Any:
        """Note ``result`` as one of the running task's children."""
        self.request.children.append(result)
        return result

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
        ``signature_from_request``): same id, ids of the family, limits, queue, priority and
        reply_to."""
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
            # The sender's reply queue (rpc://): its states keep going there.
            "reply_to": request.reply_to,
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


# Dispatch (canvas/dispatch.py) sends through a task's own apply_async only when a subclass
# overrides it; this marks the base one.
Task.apply_async.__celery_base__ = True  # type: ignore[attr-defined]


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
