"""Process-wide and per-task state: the current app, and the running task in a contextvar."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app.base import Celery
    from .app.task import Context, Task

__all__ = ["current_request", "current_task_var", "get_current_app", "set_default_app"]

#: The task being executed in this context (a thread, or one asyncio task).
current_task_var: ContextVar[Task | None] = ContextVar("celery_current_task", default=None)
#: The request (``self.request``) of the task being executed in this context.
current_request: ContextVar[Context | None] = ContextVar("celery_current_request", default=None)

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
