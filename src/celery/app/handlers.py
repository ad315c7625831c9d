"""A task class's handlers (``before_start``, ``on_success``, ``on_failure``, ``on_retry``,
``after_return``): which a class overrides, and the duty that calls them after a run."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from .. import states
from ..canvas.effects import Call, Duty

if TYPE_CHECKING:
    from .task import Task

__all__ = ["handler_calls", "overridden_handlers"]

logger = logging.getLogger("celery.worker.tracer")

HANDLERS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")

#: Task class -> the handler methods it overrides (computed once per class; a dict
#: assignment is atomic, also on free-threaded builds: a race computes it twice).
_overridden: dict[type, frozenset[str]] = {}


def overridden_handlers(cls: type) -> frozenset[str]:
    """The handler methods a Task class overrides; mostly none (then a run calls none)."""
    found = _overridden.get(cls)
    if found is None:
        from .task import Task

        found = _overridden[cls] = frozenset(
            name for name in HANDLERS if getattr(cls, name) is not getattr(Task, name))
    return found


def handler_calls(task: Task, handlers: frozenset[str], ctx: Any, state: str, value: Any,
                  einfo: Any) -> Duty[None]:
    """Call the task's handlers for an ended run, as Celery does: ``on_success``,
    ``on_failure`` or ``on_retry``, then ``after_return`` (not for a retry); a handler that
    raises is logged, and the others still run. An ``async def`` handler is awaited."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    if state == states.SUCCESS and "on_success" in handlers:
        calls.append(("on_success", (value, ctx.id, ctx.args, ctx.kwargs)))
    elif state == states.FAILURE and "on_failure" in handlers:
        calls.append(("on_failure", (value, ctx.id, ctx.args, ctx.kwargs, einfo)))
    elif state == states.RETRY and "on_retry" in handlers:
        calls.append(("on_retry", (value, ctx.id, ctx.args, ctx.kwargs, einfo)))
    if state in (states.SUCCESS, states.FAILURE) and "after_return" in handlers:
        calls.append(("after_return", (state, value, ctx.id, ctx.args, ctx.kwargs, einfo)))
    for name, args in calls:
        fn = getattr(task, name)
        try:
            yield Call(fn, args, inspect.iscoroutinefunction(fn))
        except Exception as exc:
            logger.exception("Task %s[%s] %s handler raised: %r", task.name, ctx.id, name, exc)


def before_start_call(task: Task, ctx: Any) -> Duty[None]:
    """Call the task's ``before_start`` (a worker checks it is overridden first)."""
    fn = task.before_start
    yield Call(fn, (ctx.id, ctx.args, ctx.kwargs), inspect.iscoroutinefunction(fn))
