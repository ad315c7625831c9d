"""``celery.map``, ``celery.starmap`` and ``celery.chunks``: a task applied to many items.

``task.map(items)``/``task.starmap(items)`` are one message, ``{"task", "it"}``, run by the
built-in tasks of the same names; ``task.chunks(items, n)`` splits the items in parts of
``n``, one ``celery.starmap`` task each, sent as a group.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import groups
from .signatures import Signature

if TYPE_CHECKING:
    from ..app.base import Celery
    from .dispatch import Dispatch

__all__ = ["chunks", "xmap", "xstarmap"]


# -- chunks, map, starmap ---------------------------------------------------------------------


class _basemap(Signature):
    """``celery.map``/``celery.starmap``: one message that applies a task to each item."""

    _task_name = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        kwargs = d["kwargs"]
        return cls(kwargs["task"], kwargs["it"], app=app, **dict(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], **options: Any) -> None:
        super().__init__(self._task_name, (), {"task": task, "it": list(it)}, immutable=True,
                         **options)

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        _, _, opts = self._merge(None, None, options)
        opts.setdefault("route_name", _name_of(self.kwargs.get("task")))
        return dispatch.add_task(self.task, (), {"task": self.kwargs["task"],
                                                 "it": list(self.kwargs["it"])}, opts)


@Signature.register_type()
class xmap(_basemap):
    """``task.map(it)``: ``[task(x) for x in it]`` in one task."""

    _task_name = "celery.map"

    def __repr__(self) -> str:
        return f"[{_name_of(self.kwargs.get('task'))}(x) for x in {self.kwargs.get('it')!r:.100}]"


@Signature.register_type()
class xstarmap(_basemap):
    """``task.starmap(it)``: ``[task(*x) for x in it]`` in one task."""

    _task_name = "celery.starmap"

    def __repr__(self) -> str:
        return f"[{_name_of(self.kwargs.get('task'))}(*x) for x in {self.kwargs.get('it')!r:.100}]"


@Signature.register_type()
class chunks(Signature):
    """``task.chunks(it, n)``: the items split in parts of ``n``, each part one
    ``celery.starmap`` task, all sent as a group."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        kwargs = d["kwargs"]
        return cls(kwargs["task"], kwargs["it"], kwargs["n"], app=app, **dict(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], n: int, **options: Any) -> None:
        super().__init__("celery.chunks", (), {"task": task, "it": list(it), "n": int(n)},
                         immutable=True, **options)

    def __call__(self, **options: Any) -> Any:
        return self.apply_async(**options)

    def group(self) -> groups.group:
        task, it, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = (list(itertools.islice(items, n)) for items in itertools.repeat(iter(it)))
        return groups.group([xstarmap(task, part, app=self._app)
                      for part in itertools.takewhile(bool, parts)], app=self._app)

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        opts = {**self.options, **options}
        opts.setdefault("route_name", _name_of(self.kwargs.get("task")))
        return self.group()._collect(dispatch, args, kwargs, opts)

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:
        return self.group().apply_async(args, kwargs, route_name=_name_of(self.kwargs.get("task")),
                                        **options)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        return await self.group().aapply_async(
            args, kwargs, route_name=_name_of(self.kwargs.get("task")), **options)

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        return self.group().apply(args, kwargs, **options)

    @classmethod
    def apply_chunks(cls, task: Any, it: Iterable[Any], n: int, app: Celery | None = None) -> Any:
        return cls(task, it, n, app=app)()


def _name_of(task: Any) -> Any:
    if isinstance(task, Mapping):
        return task.get("task")
    return getattr(task, "name", task)
