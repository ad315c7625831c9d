"""Signatures: a task call (name, args, kwargs, options) that can be passed around.

Only single signatures exist so far; chain, group, chord and chunks arrive with the canvas
issue.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app.base import Celery
    from .result import AsyncResult

__all__ = ["Signature", "signature"]


class Signature(dict):
    """A picklable, JSON-serializable task call, laid out as Celery's ``Signature`` dict."""

    def __init__(
        self,
        task: str | Mapping[str, Any] | Any = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celery | None = None,
        **ex: Any,
    ) -> None:
        self._app = app
        if isinstance(task, Mapping):
            super().__init__(task)
            return
        name = task if isinstance(task, str) or task is None else task.name
        if app is None and task is not None and not isinstance(task, str):
            self._app = getattr(task, "_app", None)
        opts = dict(options or {}, **ex)
        if opts.pop("immutable", False):
            immutable = True
        super().__init__(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options=opts,
            subtask_type=subtask_type,
            immutable=immutable,
            chord_size=None,
        )

    # dict keys as attributes, like Celery
    task = property(lambda self: self.get("task"))
    args = property(lambda self: self.get("args", ()))
    kwargs = property(lambda self: self.get("kwargs", {}))
    options = property(lambda self: self.get("options", {}))
    immutable = property(lambda self: self.get("immutable", False))
    subtask_type = property(lambda self: self.get("subtask_type"))

    @property
    def app(self) -> Celery:
        if self._app is not None:
            return self._app
        from ._state import get_current_app

        return get_current_app()

    @property
    def type(self) -> Any:
        return self.app.tasks[self.task]

    def _merge(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
               options: Mapping[str, Any] | None) -> tuple[tuple, dict, dict]:
        opts = dict(self.options, **(options or {}))
        if self.immutable:
            return tuple(self.args), dict(self.kwargs), opts
        return (tuple(args or ()) + tuple(self.args), dict(self.kwargs, **(kwargs or {})), opts)

    def clone(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Signature:
        a, k, o = self._merge(args, kwargs, options)
        sig = Signature(self.task, a, k, copy.deepcopy(o), subtask_type=self.subtask_type,
                        immutable=self.immutable, app=self._app)
        return sig

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.aapply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        a, k, o = self._merge(args, kwargs, options)
        task = self.app.tasks.get(self.task)
        if task is not None:
            return task.apply_async(a, k, **o)
        return self.app.send_task(self.task, a, k, **o)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        a, k, o = self._merge(args, kwargs, options)
        task = self.app.tasks.get(self.task)
        if task is not None:
            return await task.aapply_async(a, k, **o)
        return await self.app.asend_task(self.task, a, k, **o)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task function in this process."""
        a, k, _ = self._merge(args, kwargs, None)
        return self.type(*a, **k)

    def __repr__(self) -> str:
        args = ", ".join([repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()])
        return f"{self.task}({args}){'' if not self.immutable else ' (immutable)'}"

    def __deepcopy__(self, memo: dict) -> Signature:
        return Signature(copy.deepcopy(dict(self), memo), app=self._app)

    def __reduce__(self) -> Any:
        return (Signature, (dict(self),))


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """Make a Signature from a task name, a task, or a dict (Celery's ``signature``)."""
    if isinstance(varies, dict) and not args and not kwargs:
        return varies if isinstance(varies, Signature) else Signature(varies)
    return Signature(varies, *args, **kwargs)
