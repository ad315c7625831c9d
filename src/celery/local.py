"""``Proxy``: an object that stands for another, looked up each time it is used.

``from celery import current_app, current_task`` give proxies: they resolve to the app and
the task current *when used* (in this thread, or this asyncio task), not when imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Proxy"]


class Proxy:
    """Forwards attribute access, calls, comparisons and common protocols to ``resolve()``.

    Holds nothing but the resolving function, so one proxy is safely shared by every thread.
    """

    __slots__ = ("__resolve", "__weakref__")

    def __init__(self, resolve: Callable[[], Any], name: str | None = None) -> None:
        object.__setattr__(self, "_Proxy__resolve", resolve)

    def _get_current_object(self) -> Any:
        """The object this proxy stands for right now (Celery's name)."""
        return self.__resolve()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_current_object(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get_current_object(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._get_current_object(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get_current_object()(*args, **kwargs)

    def __bool__(self) -> bool:
        return bool(self._get_current_object())

    def __eq__(self, other: object) -> bool:
        return bool(self._get_current_object() == other)

    def __ne__(self, other: object) -> bool:
        return bool(self._get_current_object() != other)

    def __hash__(self) -> int:
        return hash(self._get_current_object())

    def __repr__(self) -> str:
        return repr(self._get_current_object())

    def __str__(self) -> str:
        return str(self._get_current_object())

    def __dir__(self) -> list[str]:
        return dir(self._get_current_object())

    def __getitem__(self, key: Any) -> Any:
        return self._get_current_object()[key]

    def __contains__(self, item: Any) -> bool:
        return item in self._get_current_object()

    def __iter__(self) -> Any:
        return iter(self._get_current_object())

    def __len__(self) -> int:
        return len(self._get_current_object())
