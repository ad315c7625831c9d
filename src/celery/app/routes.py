"""Routing: choose the queue (and exchange/routing key) for a task message."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..exceptions import ImproperlyConfigured

__all__ = ["Router"]

Route = dict[str, Any]
RouterFn = Callable[..., Any]


def _as_route(value: Any) -> Route | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"queue": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise ImproperlyConfigured(f"A task route must be a queue name or a mapping, not {value!r}")


class _MapRouter:
    """Routes by task name: exact names, glob patterns and compiled regexes."""

    def __init__(self, mapping: Mapping[Any, Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for key, route in mapping.items():
            if isinstance(key, re.Pattern):
                self.patterns.append((key, route))
            elif "*" in key or "?" in key or "[" in key:
                self.patterns.append((re.compile(fnmatch.translate(key)), route))
            else:
                self.exact[key] = route

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self.exact:
            return self.exact[name]
        for pattern, route in self.patterns:
            if pattern.match(name):
                return route
        return None


class Router:
    """Resolves ``task_routes`` (a mapping, a function, or a list of either) per message.

    Immutable after construction, so it may be used from any thread.
    """

    def __init__(self, routes: Any) -> None:
        if routes is None:
            routes = []
        elif isinstance(routes, Mapping) or callable(routes) or isinstance(routes, str):
            routes = [routes]
        elif not isinstance(routes, Sequence):
            raise ImproperlyConfigured(f"task_routes must be a mapping, function or list, not {routes!r}")
        self._routers: list[RouterFn] = [self._compile(r) for r in routes]

    @staticmethod
    def _compile(route: Any) -> RouterFn:
        if isinstance(route, Mapping):
            return _MapRouter(route)
        if isinstance(route, str):
            from .config import import_object

            route = import_object(route)
        if callable(route):
            return route
        raise ImproperlyConfigured(f"Unusable entry in task_routes: {route!r}")

    def route(
        self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], options: Mapping[str, Any], task: Any = None
    ) -> Route:
        """The first matching route for a task name, or ``{}``."""
        for router in self._routers:
            try:
                found = router(name, args, kwargs, options, task=task)
            except TypeError:
                found = router(name, args, kwargs, options)
            route = _as_route(found)
            if route is not None:
                return route
        return {}
