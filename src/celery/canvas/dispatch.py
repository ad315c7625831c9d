"""Dispatch: what one send of a canvas does, gathered without I/O, then done together.

``Signature._collect`` adds to a Dispatch: chord sizes and header groups to store, and the
messages to publish. ``send()`` (blocking) or ``asend()`` (on the running loop) then writes
the chords first, so that no header member can finish before its chord is known, then
publishes every message in one pipelined batch, and notes the results as sent (read-ahead,
or the sending task's children). A group of N members costs one batch, not N round trips.

A Task class that overrides ``apply_async`` keeps its override: its members are applied
through it, one by one, after the batch.

Made, filled and sent by one thread (the caller's); never shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..messaging.protocol import uuid4_str

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..messaging.protocol import Message

__all__ = ["Dispatch"]


class Dispatch:
    """See the module docstring."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        #: (group id, header size) of each chord to prepare.
        self.chord_sizes: list[tuple[str, int]] = []
        #: Header GroupResults to save before sending (chords whose header nests groups).
        self.saved_groups: list[Any] = []
        self._messages: list[tuple[str, Message, dict[str, Any]]] = []
        self._direct: list[tuple[Any, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = []
        self._results: dict[str, Any] = {}
        self._trail: list[Any] = []

    # -- gathering (no I/O) ----------------------------------------------------------------------

    def add_task(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                 options: Mapping[str, Any]) -> Any:
        """One task message to send; returns its result (not sent yet)."""
        app = self.app
        opts = dict(options)
        task = app.tasks.get(name)
        if task is not None and _overrides_apply_async(task):
            task_id = opts.setdefault("task_id", uuid4_str())
            self._direct.append((task, tuple(args), dict(kwargs), opts))
            return app.AsyncResult(task_id, task_name=name)
        message, task_id = app._prepare(name, args, kwargs, task, opts)
        self._messages.append((name, message, opts))
        result = self._results[task_id] = app.AsyncResult(task_id, task_name=name)
        return result

    def set_chord_size(self, group_id: str, size: int) -> None:
        self.chord_sizes.append((group_id, size))

    def save_group(self, result: Any) -> None:
        self.saved_groups.append(result)

    def trail(self, result: Any) -> None:
        """Once sent, note ``result`` as a child of the task this is sent from, if any
        (``add_trail``)."""
        self._trail.append(result)

    def adopt(self, results: Iterable[Any]) -> None:
        """Note ``results`` (the ones handed to the caller, with their parents) as the
        results of the tasks of the same ids, for read-ahead once sent."""
        for result in results:
            if getattr(result, "id", None) in self._results:
                self._results[result.id] = result

    # -- sending ---------------------------------------------------------------------------------

    def send(self) -> None:
        """Do it all, blocking; any thread."""
        if self.chord_sizes or self.saved_groups:
            self.app.backend.prepare_chords(self.chord_sizes, self.saved_groups)
        self.app._publish_many([(name, message) for name, message, _ in self._messages])
        for task, args, kwargs, options in self._direct:
            task.apply_async(args, kwargs, **options)
        self._note_sent()

    async def asend(self) -> None:
        """Do it all on the running event loop, without blocking it."""
        if self.chord_sizes or self.saved_groups:
            await self.app.backend.aprepare_chords(self.chord_sizes, self.saved_groups)
        await self.app._apublish_many([(name, message) for name, message, _ in self._messages])
        for task, args, kwargs, options in self._direct:
            await task.aapply_async(args, kwargs, **options)
        self._note_sent()

    def _note_sent(self) -> None:
        app = self.app
        for _, message, options in self._messages:
            task_id = message.headers["id"]
            app._sent(task_id, message.headers["task"], options,
                      message.headers.get("ignore_result"), self._results[task_id])
        for result in self._trail:
            self.add_trail(result)

    def add_trail(self, result: Any) -> None:
        """A group sent from inside a task is one of that task's children (Celery's trail)."""
        from .._state import current_request, current_task_var

        if current_task_var.get() is not None:
            request = current_request.get()
            if request is not None:
                request.children.append(result)


def _overrides_apply_async(task: Any) -> bool:
    """True unless the task's ``apply_async`` is Celery's own (marked by ``app/task.py``)."""
    return not getattr(type(task).apply_async, "__celery_base__", False)
