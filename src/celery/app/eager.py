"""Eager runs (``Task.apply``/``aapply``, ``task_always_eager``): the task here and now, and
what a worker would do after it, applied eagerly too (callbacks, the chain, errbacks,
handlers), as Celery's eager tracer does."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import states
from .._state import Context, current_request, current_task_var
from ..canvas.effects import drive
from ..canvas.followups import after_end, after_success
from ..exceptions import Ignore, Retry
from .handlers import before_start_call, handler_calls, overridden_handlers

if TYPE_CHECKING:
    from .task import Task

__all__ = ["EagerReplaced", "aapply", "apply"]


class EagerReplaced(Ignore):
    """An eager task replaced itself (``Task.replace``): its replacement ran, ``value`` is
    its result."""

    def __init__(self, value: Any) -> None:
        super().__init__("Replaced by new task (eager)")
        self.value = value


def apply(task: Task, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
          options: Mapping[str, Any]) -> Any:
    """``Task.apply``: an EagerResult (see the module docstring)."""
    req = _request(task, args, kwargs, options)
    token_t, token_r = current_task_var.set(task), current_request.set(req)
    try:
        _before_start(task, req)
        value = task.run(*req.args, **req.kwargs)
        if inspect.isawaitable(value):
            value = task.app.portal.call(_await(value, task, req))
    except EagerReplaced as replaced:
        value = replaced.value
    except Retry as exc:
        if exc.sig is None:
            return _outcome(task, req, exc, options)
        return apply(task, exc.sig.args, exc.sig.kwargs, _retry_options(req, options))
    except Exception as exc:
        return _outcome(task, req, exc, options)
    finally:
        current_request.reset(token_r)
        current_task_var.reset(token_t)
    return _outcome(task, req, value, options, ok=True)


async def aapply(task: Task, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
                 options: Mapping[str, Any]) -> Any:
    """``Task.aapply``: ``apply`` with an ``async def`` task awaited on the running loop."""
    req = _request(task, args, kwargs, options)
    token_t, token_r = current_task_var.set(task), current_request.set(req)
    try:
        _before_start(task, req)
        value = task.run(*req.args, **req.kwargs)
        if inspect.isawaitable(value):
            value = await value
    except EagerReplaced as replaced:
        value = replaced.value
    except Retry as exc:
        if exc.sig is None:
            return _outcome(task, req, exc, options)
        return await aapply(task, exc.sig.args, exc.sig.kwargs, _retry_options(req, options))
    except Exception as exc:
        return _outcome(task, req, exc, options)
    finally:
        current_request.reset(token_r)
        current_task_var.reset(token_t)
    return _outcome(task, req, value, options, ok=True)


def _request(task: Task, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
             options: Mapping[str, Any]) -> Context:
    task_id = options.get("task_id") or str(uuid.uuid4())
    parent = current_request.get() if current_task_var.get() is not None else None
    return Context(
        id=task_id, task=task.name, args=list(args or ()), kwargs=dict(kwargs or {}),
        is_eager=True, called_directly=False, retries=options.get("retries", 0),
        root_id=options.get("root_id") or (
            (parent.root_id or parent.id) if parent is not None else task_id),
        parent_id=options.get("parent_id") or (parent.id if parent is not None else None),
        delivery_info={"is_eager": True},
        callbacks=_as_list(options.get("link")), errbacks=_as_list(options.get("link_error")),
        chain=options.get("chain"), group=options.get("group_id"),
        group_index=options.get("group_index"),
    )


def _outcome(task: Task, req: Context, value: Any, options: Mapping[str, Any],
             ok: bool = False) -> Any:
    """The EagerResult of an eager run (re-raising a failure if eager errors propagate);
    with ``task_store_eager_result`` the outcome is also stored in the result backend."""
    from ..result import EagerResult
    from ..utils.einfo import ExceptionInfo

    app = task.app
    conf = app.conf
    einfo = None
    if ok:
        state = states.SUCCESS
    else:
        if options.get("throw", conf.task_eager_propagates):
            raise value
        state = states.FAILURE
        einfo = ExceptionInfo.of(value)
    tb = einfo.traceback if einfo is not None else None
    if conf.task_store_eager_result and not task.ignore_result:
        app.backend.store_result(req.id, value, state, tb, request=req)  # type: ignore[arg-type]
    _followups(task, req, state, value, einfo)
    return EagerResult(str(req.id), value, state, traceback=tb, name=task.name, app=app)


def _followups(task: Task, req: Context, state: str, value: Any, einfo: Any) -> None:
    """What the worker does after a run, here and now: callbacks and the chain applied
    eagerly, errbacks, the task's handlers (a callback's failure propagates, as the task's
    own would)."""
    app = task.app
    if state == states.SUCCESS and (req.callbacks or req.chain):
        drive(after_success(app, req, value), app, eager=True)
    if state == states.FAILURE and (req.chain or req.errbacks):
        drive(after_end(app, req, state, value, einfo.traceback), app, eager=True)
    handlers = overridden_handlers(type(task))
    if handlers:
        drive(handler_calls(task, handlers, req, state, value, einfo), app, eager=True)


def _before_start(task: Task, req: Context) -> None:
    """``before_start``, if the class overrides it (as the worker calls it)."""
    if "before_start" in overridden_handlers(type(task)):
        drive(before_start_call(task, req), task.app, eager=True)


def _retry_options(req: Context, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options for running an eager retry at once (as Celery: the countdown is not waited)."""
    return {**options, "task_id": req.id, "retries": req.retries + 1}


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple) else [value]


async def _await(value: Any, task: Task, req: Context) -> Any:
    # The portal loop has its own context: the task and its request are set again there.
    current_task_var.set(task)
    current_request.set(req)
    return await value
