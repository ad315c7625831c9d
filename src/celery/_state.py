"""Process-wide and per-task state: the current app, the running task and its request
(``Context``, in a contextvar)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app.base import Celery
    from .app.task import Task

__all__ = ["Context", "current_request", "current_task_var", "get_current_app", "join_allowed",
           "set_default_app"]

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


#: The task being executed in this context (a thread, or one asyncio task).
current_task_var: ContextVar[Task | None] = ContextVar("celery_current_task", default=None)
#: The request (``self.request``) of the task being executed in this context.
current_request: ContextVar[Context | None] = ContextVar("celery_current_request", default=None)
#: True inside ``celery.result.allow_join_result()``: a task may then wait for results.
join_allowed: ContextVar[bool] = ContextVar("celery_join_allowed", default=False)

# _apps_lock guards _default_app and _all_apps, which any thread may read or write.
_apps_lock = threading.Lock()
_default_app: Celery | None = None
_all_apps: weakref.WeakSet[Celery] = weakref.WeakSet()
#: Callbacks run for every app created (used by @shared_task).
_on_app_finalizers: list[Any] = []
#: Makes the default app when a caller needs one and none was created. ``celery.app.base``
#: sets it when imported: this module is below the app in the layering and never imports it.
make_default_app: Callable[[], Celery] | None = None


def register_app(app: Celery) -> None:
    global _default_app
    with _apps_lock:
        _all_apps.add(app)
        if _default_app is None:
            _default_app = app
        finalizers = list(_on_app_finalizers)
    for fn in finalizers:
        fn(app)


def set_default_app(app: Celery) -> None:
    global _default_app
    with _apps_lock:
        _default_app = app


def swap_default_app(app: Celery | None) -> Celery | None:
    """Make ``app`` the default app; returns the one it replaced (to put back later)."""
    global _default_app
    with _apps_lock:
        before, _default_app = _default_app, app
    return before


def get_current_app() -> Celery:
    """The app of the running task, else the default (first created, or set_default) app."""
    task = current_task_var.get()
    if task is not None and task._app is not None:
        return task._app
    with _apps_lock:
        app = _default_app
    if app is None:
        if make_default_app is None:
            raise RuntimeError("No Celery app exists yet: create one with Celery(...) first")
        app = make_default_app()
    return app


def all_apps() -> list[Celery]:
    with _apps_lock:
        return list(_all_apps)


def connect_on_app_finalize(fn: Any) -> Any:
    """Run ``fn(app)`` for every existing and future app (how shared tasks reach apps)."""
    with _apps_lock:
        _on_app_finalizers.append(fn)
        apps = list(_all_apps)
    for app in apps:
        fn(app)
    return fn
