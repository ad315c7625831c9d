"""``@shared_task``: a task registered with every app, used through the current app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _state

__all__ = ["shared_task"]


class _SharedTaskProxy:
    """Stands for this function's task in the current app.

    The task's name is found when the proxy is used, in the app current then: a default name
    depends on the app (``__main__`` becomes its ``main``), and at decoration time there may
    be no app yet, or only one made on the spot that is not the one the project creates next.
    """

    def __init__(self, fun: Callable[..., Any], name: str | None) -> None:
        self._fixed_name = name
        self.__wrapped__ = fun
        self.__doc__ = fun.__doc__
        self.__name__ = fun.__name__
        self.__module__ = fun.__module__

    def _target(self) -> Any:
        from .base import gen_task_name

        app = _state.get_current_app()
        fun = self.__wrapped__
        name = self._fixed_name or gen_task_name(app, fun.__name__, fun.__module__)
        return app.tasks[name]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@shared_task: {self._fixed_name or self.__wrapped__.__qualname__}>"


def shared_task(*args: Any, **options: Any) -> Any:
    """Decorator for tasks that belong to no app in particular (reusable apps, libraries).

    Works before any app exists: the task is registered with every app when it is created,
    and the returned proxy calls the task of the app current when it is used.
    """

    def create(fun: Callable[..., Any]) -> _SharedTaskProxy:
        def register(app: Any) -> None:
            app._task_from_fun(fun, **options)

        _state.connect_on_app_finalize(register)
        return _SharedTaskProxy(fun, options.get("name"))

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    return create
