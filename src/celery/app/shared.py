"""``@shared_task``: a task registered with every app, used through the current app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _state

__all__ = ["shared_task"]


class _SharedTaskProxy:
    """Stands for the task of this name in the current app."""

    def __init__(self, name: str, fun: Callable[..., Any]) -> None:
        self._name = name
        self.__wrapped__ = fun
        self.__doc__ = fun.__doc__
        self.__name__ = fun.__name__

    def _target(self) -> Any:
        return _state.get_current_app().tasks[self._name]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@shared_task: {self._name}>"


def shared_task(*args: Any, **options: Any) -> Any:
    """Decorator for tasks that belong to no app in particular (reusable apps, libraries)."""

    def create(fun: Callable[..., Any]) -> _SharedTaskProxy:
        from .base import gen_task_name

        name_holder: dict[str, str] = {}

        def register(app: Any) -> None:
            task = app._task_from_fun(fun, **options)
            name_holder["name"] = task.name

        _state.connect_on_app_finalize(register)
        name = options.get("name")
        if name is None:
            name = name_holder.get("name") or gen_task_name(_state.get_current_app(), fun.__name__, fun.__module__)
        return _SharedTaskProxy(name, fun)

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    return create
