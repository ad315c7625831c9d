"""``ScheduleEntry``: one periodic task of beat's schedule, with Celery's interface."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..schedules import maybe_schedule

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["BeatLazyFunc", "ScheduleEntry"]

#: The fields a user edits in ``beat_schedule`` (``ScheduleEntry.update`` copies these).
EDITABLE = ("task", "schedule", "args", "kwargs", "options")


class BeatLazyFunc:
    """An argument computed when beat sends the entry, not when the schedule is read
    (Celery's name): ``args=(BeatLazyFunc(time.time),)``."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._func, self._args, self._kwargs = func, args, kwargs

    def __call__(self) -> Any:
        return self.delay()

    def delay(self) -> Any:
        return self._func(*self._args, **self._kwargs)


def evaluate_args(args: Sequence[Any]) -> list[Any]:
    return [a.delay() if isinstance(a, BeatLazyFunc) else a for a in args]


def evaluate_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.delay() if isinstance(v, BeatLazyFunc) else v for k, v in kwargs.items()}


class ScheduleEntry:
    """An entry of the schedule: which task to send, when (``schedule``), with what.

    ``last_run_at`` (an aware datetime) and ``total_run_count`` are beat's state; ``next``
    returns a copy after one more run. ``catch_up`` (ours, default True) says what happens
    to a run that came due while no beat was sending: sent once when beat is back (True,
    Celery's behaviour), or skipped, the next run keeping its time (False).
    Entries are not shared between threads: beat's own thread reads and replaces them.
    """

    def __init__(self, name: str | None = None, task: str | None = None,
                 last_run_at: dt.datetime | None = None, total_run_count: int | None = None,
                 schedule: Any = None, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                 options: Mapping[str, Any] | None = None, relative: bool = False,
                 app: Celery | None = None, catch_up: bool = True) -> None:
        self.app = app
        self.name: Any = name
        self.task: Any = task
        self.args = tuple(args) if args is not None else ()
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.schedule: Any = maybe_schedule(schedule, relative, app=app)
        self.catch_up = bool(catch_up)
        self.last_run_at = last_run_at or self.default_now()
        self.total_run_count = total_run_count or 0

    def default_now(self) -> dt.datetime:
        if self.schedule is not None:
            return self.schedule.now()
        return dt.datetime.now(dt.UTC)

    _default_now = default_now  # Celery's private name, used by some schedulers

    def _next_instance(self, last_run_at: dt.datetime | None = None) -> ScheduleEntry:
        """A copy of this entry after one more run (at ``last_run_at``, default now)."""
        return self._copy(last_run_at=last_run_at or self.default_now(),
                          total_run_count=self.total_run_count + 1)

    __next__ = next = _next_instance

    def _copy(self, **changes: Any) -> ScheduleEntry:
        fields = dict(self)
        fields.update(changes)
        return type(self)(**fields)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.name, self.task, self.last_run_at, self.total_run_count,
                                self.schedule, self.args, self.kwargs, self.options, False,
                                None, self.catch_up)

    def update(self, other: ScheduleEntry) -> None:
        """Take ``other``'s editable fields (task, schedule, args, kwargs, options)."""
        for name in EDITABLE:
            setattr(self, name, getattr(other, name))
        self.catch_up = other.catch_up

    def is_due(self) -> tuple[bool, float]:
        """``schedule.is_due(last_run_at)``: ``(due now, seconds until the next check)``."""
        return self.schedule.is_due(self.last_run_at)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        yield from (("name", self.name), ("task", self.task), ("last_run_at", self.last_run_at),
                    ("total_run_count", self.total_run_count), ("schedule", self.schedule),
                    ("args", self.args), ("kwargs", self.kwargs), ("options", self.options),
                    ("app", self.app), ("catch_up", self.catch_up))

    def __repr__(self) -> str:
        call = ", ".join([*(repr(a) for a in self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"<ScheduleEntry: {self.name} {self.task}({call}) {self.schedule}>"

    def __lt__(self, other: Any) -> bool:
        if isinstance(other, ScheduleEntry):
            return id(self) < id(other)  # heap ties: any stable order
        return NotImplemented

    def editable_fields_equal(self, other: ScheduleEntry) -> bool:
        return all(getattr(self, n) == getattr(other, n) for n in EDITABLE)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScheduleEntry):
            return NotImplemented
        return self.name == other.name and self.editable_fields_equal(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value
