"""``celery.app.trace``: Celery's hook around each task execution, for the libraries that
wrap it (sentry-sdk's CeleryIntegration replaces ``build_tracer``).

Our worker does not execute tasks through a tracer built here (worker/tracer.py does the
work); but while ``build_tracer`` is someone else's function, the worker builds each ``def``
task's tracer through it once, as Celery's worker does, and runs every execution of that task
inside the function it returned, called as Celery calls it: ``(uuid, args, kwargs, request)``.
``async def`` tasks are not run through it: such wrappers are synchronous and would return
before the task's coroutine runs.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .task import Task

__all__ = ["build_tracer", "hooked_tracer", "run_traced", "task_has_custom"]

R = TypeVar("R")

#: A tracer as Celery calls it: ``trace(uuid, args, kwargs, request=None)``.
TraceFn = Callable[..., Any]

#: The execution the worker hands to the tracer it is calling (set on the executing thread,
#: for the call only).
_execution: ContextVar[Callable[[], Any] | None] = ContextVar("celery_trace_execution",
                                                              default=None)


def task_has_custom(task: Any, attr: str) -> bool:
    """True if ``task``'s class (or a base below Celery's ``Task``) defines ``attr``."""
    from .task import Task

    for cls in type(task).__mro__:
        if cls is Task or cls is object:
            return False
        if attr in cls.__dict__:
            return True
    return False


def build_tracer(name: str, task: Task[Any, Any], loader: Any = None, hostname: str | None = None,
                 store_errors: bool = True, Info: Any = None, eager: bool = False,  # noqa: N803
                 propagate: bool = False, app: Any = None, monotonic: Any = None,
                 trace_ok_t: Any = None, IGNORE_STATES: Any = None) -> TraceFn:  # noqa: N803
    """The function through which the worker runs ``task``: ``trace(uuid, args, kwargs,
    request=None)`` runs the execution the worker is handing over and returns what it gives.

    Celery's arguments are accepted for the wrappers that pass them on; the states, results and
    signals are the worker's own (worker/tracer.py), whatever they say.
    """
    return _trace


def _trace(uuid: str, args: Sequence[Any], kwargs: Mapping[str, Any], request: Any = None
           ) -> Any:
    execution = _execution.get()
    if execution is None:
        raise RuntimeError("celery.app.trace: a tracer runs only inside the worker's execution "
                           "of a task")
    return execution()


_own_build_tracer = build_tracer
# Tracers built through a replaced build_tracer, one per task (weak: an app's tasks may go).
# Any executor thread may build or read one: _tracers_lock guards the mapping.
_tracers: weakref.WeakKeyDictionary[Any, tuple[Callable[..., Any], TraceFn]] = (
    weakref.WeakKeyDictionary())
_tracers_lock = threading.Lock()
# Held while a tracer is built (not while one is read): two executor threads that meet a task
# at once must not both build it (Sentry's builder patches the task's run method).
_build_lock = threading.Lock()


def hooked_tracer(task: Task[Any, Any], hostname: str | None = None) -> TraceFn | None:
    """``task``'s tracer when ``build_tracer`` was replaced (by an integration), else None.

    Built once per task and replacement, as Celery's worker builds one per task at start."""
    builder = globals()["build_tracer"]
    if builder is _own_build_tracer:
        return None
    traced = _built(task, builder)
    if traced is not None:
        return traced
    with _build_lock:
        traced = _built(task, builder)  # another thread may have built it meanwhile
        if traced is None:
            traced = builder(task.name, task, hostname=hostname, app=task.app)
            with _tracers_lock:
                _tracers[task] = (builder, traced)
    return traced


def _built(task: Task[Any, Any], builder: Callable[..., Any]) -> TraceFn | None:
    """``task``'s tracer already built by ``builder``, if any."""
    with _tracers_lock:
        known = _tracers.get(task)
    return known[1] if known is not None and known[0] is builder else None


def run_traced(tracer: TraceFn, uuid: str, args: Sequence[Any], kwargs: Mapping[str, Any],
               request: Any, execution: Callable[[], R]) -> R:
    """Call ``tracer`` as Celery does, with ``execution`` as what its inner tracer runs."""
    token = _execution.set(execution)
    try:
        result: R = tracer(uuid, args, kwargs, request)
        return result
    finally:
        _execution.reset(token)
