"""``Scheduler``: beat's schedule and its ``tick``, with Celery's interface for subclasses.

A subclass (``-S module:Class``, e.g. a database-backed scheduler) may override, as in
Celery: ``setup_schedule``, the ``schedule`` property (``get_schedule``/``set_schedule``),
``reserve``, ``apply_async``, ``send_task``, ``sync``, ``close``, ``install_default_entries``,
``info``, and the ``Entry`` class. ``tick`` is ours: a heap of due times, so an idle beat
sleeps until the next due entry whatever the number of entries. Every run first goes
through the leader lease (``elector.claim``) when beat runs with one (beat/service.py).

Thread-safety: a scheduler belongs to beat's thread; nothing here is shared.
"""

from __future__ import annotations

import copy
import datetime as dt
import heapq
import itertools
import logging
import time
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from ..exceptions import SchedulingError
from ..transport.lease import Claim
from .entry import ScheduleEntry, evaluate_args, evaluate_kwargs

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..result import AsyncResult
    from .leader import Elector

__all__ = ["DEFAULT_MAX_INTERVAL", "LostLease", "Scheduler"]

logger = logging.getLogger("celery.beat")

#: Seconds beat sleeps at most between two looks at its schedule (Celery's default).
DEFAULT_MAX_INTERVAL = 300.0
#: The keys a ``beat_schedule`` entry may have.
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative", "catch_up"})


class LostLease(SchedulingError):
    """This beat found, when claiming a run, that it no longer holds the leader lease."""


def from_epoch(seconds: float, tz: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz)


class Scheduler:
    """The periodic tasks of one beat and when each runs next."""

    Entry = ScheduleEntry
    #: Celery's attribute: seconds between syncs of a persistent schedule.
    sync_every = 3 * 60

    def __init__(self, app: Celery, schedule: MutableMapping[str, ScheduleEntry] | None = None,
                 max_interval: float | None = None, Producer: Any = None, lazy: bool = False,  # noqa: N803
                 sync_every_tasks: int | None = None, **kwargs: Any) -> None:
        self.app = app
        self.data: MutableMapping[str, ScheduleEntry] = {} if schedule is None else schedule
        self.max_interval = float(max_interval or app.conf.beat_max_loop_interval
                                  or DEFAULT_MAX_INTERVAL)
        if Producer is not None:
            logger.warning("beat: the Producer argument is not used (tasks are sent through "
                           "the app's transport)")
        self.Producer = Producer
        self.sync_every_tasks = (app.conf.beat_sync_every if sync_every_tasks is None
                                 else sync_every_tasks)
        #: The leader lease (beat/leader.py) when one is used; None sends without one.
        self.elector: Elector | None = None
        self._last_sync: float | None = None
        self._tasks_since_sync = 0
        self._heap: list[tuple[float, int, str]] | None = None
        self._seq = itertools.count()
        self.old_schedulers: dict[str, ScheduleEntry] | None = None
        if not lazy:
            self.setup_schedule()

    # -- the schedule --------------------------------------------------------------------

    def get_schedule(self) -> MutableMapping[str, ScheduleEntry]:
        return self.data

    def set_schedule(self, schedule: MutableMapping[str, ScheduleEntry]) -> None:
        self.data = schedule

    schedule = property(get_schedule, set_schedule)

    @property
    def info(self) -> str:
        return ""

    def setup_schedule(self) -> None:
        self.app.finalize()  # imports and on_after_configure handlers (add_periodic_task)
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)

    def install_default_entries(self, data: MutableMapping[str, Any]) -> None:
        """Celery's one default entry: ``celery.backend_cleanup`` daily at 4:00 when results
        expire and the backend does not expire them by itself."""
        if "celery.backend_cleanup" in data or not self.app.conf.result_expires:
            return
        if not self.app.conf.result_backend or not hasattr(self.app.backend, "cleanup"):
            return
        from ..schedules import crontab

        self.add(name="celery.backend_cleanup", task="celery.backend_cleanup",
                 schedule=crontab("0", "4", "*"), options={"expires": 12 * 3600})

    def add(self, **kwargs: Any) -> ScheduleEntry:
        entry = self.Entry(app=self.app, **kwargs)
        self.schedule[entry.name] = entry
        return entry

    def _maybe_entry(self, name: str, entry: Any) -> ScheduleEntry:
        if isinstance(entry, self.Entry):
            entry.app = self.app
            return entry
        return self.Entry(**dict(entry, name=name, app=self.app))

    def checked_entry(self, name: str, fields: Any) -> ScheduleEntry:
        """The entry ``fields`` of ``beat_schedule`` describe; SchedulingError (one line,
        naming what is wrong) for a bad one."""
        if isinstance(fields, ScheduleEntry):
            fields = {k: v for k, v in fields if k in ENTRY_KEYS}
        if not isinstance(fields, Mapping):
            raise SchedulingError(f"must be a dict with 'task' and 'schedule', not {type(fields).__name__}")
        unknown = sorted(set(fields) - ENTRY_KEYS)
        if unknown:
            raise SchedulingError(f"unknown key(s) {', '.join(map(repr, unknown))} "
                                  f"(allowed: {', '.join(sorted(ENTRY_KEYS))})")
        task = fields.get("task")
        if not isinstance(task, str) or not task:
            raise SchedulingError("'task' must be a task name")
        if task not in self.app.tasks and self.app.conf.beat_unregistered_tasks != "send":
            raise SchedulingError(f"task {task!r} is not registered in this app (import its "
                                  "module, or set beat_unregistered_tasks = 'send')")
        fields = dict(fields)
        fields["schedule"] = _schedule_of(fields.get("schedule"), self.app)
        try:
            return self._maybe_entry(name, fields)
        except (TypeError, ValueError) as exc:
            raise SchedulingError(str(exc)) from None

    def update_from_dict(self, dict_: Mapping[str, Any]) -> None:
        self.schedule.update(self._checked_entries(dict_))

    def _checked_entries(self, dict_: Mapping[str, Any]) -> dict[str, ScheduleEntry]:
        entries = {}
        for name, fields in dict(dict_ or {}).items():
            try:
                entries[name] = self.checked_entry(name, fields)
            except SchedulingError as exc:
                logger.error("beat: entry %r skipped: %s", name, exc)
        return entries

    def merge_inplace(self, b: Mapping[str, Any]) -> None:
        """Make the schedule hold exactly ``b``'s entries (a bad one skipped, logged),
        keeping the run state of entries it had already."""
        entries = self._checked_entries(b)
        schedule = self.schedule
        for name in set(schedule) - set(entries) - {"celery.backend_cleanup"}:
            schedule.pop(name, None)
        for name, entry in entries.items():
            if name in schedule:
                schedule[name].update(entry)
            else:
                schedule[name] = entry

    @staticmethod
    def schedules_equal(old: Mapping[str, ScheduleEntry] | None,
                        new: Mapping[str, ScheduleEntry] | None) -> bool:
        if old is None or new is None or set(old) != set(new):
            return old is None and new is None
        return all(old[name].editable_fields_equal(new[name]) for name in old)

    # -- ticking -------------------------------------------------------------------------

    def is_due(self, entry: ScheduleEntry) -> tuple[bool, float]:
        return entry.is_due()

    def populate_heap(self) -> None:
        now, heap = time.time(), []
        for name, entry in self.schedule.items():
            due, next_in = self.is_due(entry)
            heap.append((now if due else now + next_in, next(self._seq), name))
        heapq.heapify(heap)
        self._heap = heap

    def tick(self) -> float:
        """Send every entry that is due; the seconds until one may be due next (at most
        ``max_interval``). Raises LostLease when a claim found the lease lost."""
        if self._heap is None or not self.schedules_equal(self.old_schedulers, self.schedule):
            self.old_schedulers = copy.copy(dict(self.schedule))
            self.populate_heap()
        heap = self._heap
        assert heap is not None
        while heap and heap[0][0] <= time.time():
            _, _, name = heapq.heappop(heap)
            entry = self.schedule.get(name)
            if entry is None:
                continue
            due, next_in = self.is_due(entry)
            if due:
                try:
                    self._run(entry)
                except BaseException:
                    self._heap = None  # rebuilt next tick: the popped entry is not lost
                    raise
            heapq.heappush(heap, (time.time() + max(next_in, 0.0), next(self._seq), name))
        if not heap:
            return self.max_interval
        return max(min(heap[0][0] - time.time(), self.max_interval), 0.0)

    def _run(self, entry: ScheduleEntry) -> None:
        """Claim this run of ``entry`` (with a lease), record it, then send it."""
        new = self.reserve(entry)
        if self.elector is not None:
            try:
                outcome, recorded = self.elector.claim(entry.name, new.last_run_at.timestamp())
            except BaseException:
                self.schedule[entry.name] = entry  # not run: undo
                raise
            if outcome is Claim.LOST:
                self.schedule[entry.name] = entry
                raise LostLease(f"lost the leader lease before sending {entry.name!r}")
            if outcome is Claim.ALREADY and recorded is not None:
                self.schedule[entry.name] = entry._copy(
                    last_run_at=from_epoch(recorded, new.last_run_at.tzinfo or dt.UTC))
                logger.info("beat: %s: this run was sent already (another beat); not sent again",
                            entry.name)
                return
        self.record(new)
        self.apply_entry(entry)

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        new_entry = self.schedule[entry.name] = next(entry)
        return new_entry

    def record(self, entry: ScheduleEntry) -> None:
        """Keep ``entry``'s new run state (a persistent scheduler writes it at once)."""

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            result = self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:
            logger.error("Message Error: %s", exc, exc_info=True)
        else:
            if result is not None:
                logger.debug("%s sent. id->%s", entry.task, result.id)

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> AsyncResult | None:
        entry = self.reserve(entry) if advance else entry
        task = self.app.tasks.get(entry.task)
        try:
            args, kw = evaluate_args(entry.args), evaluate_kwargs(entry.kwargs)
            if task is not None:
                return task.apply_async(args, kw, **entry.options)
            return self.send_task(entry.task, args, kw, **entry.options)
        except Exception as exc:
            raise SchedulingError(f"Couldn't apply scheduled task {entry.name}: {exc}") from exc
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()

    def send_task(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.app.send_task(*args, **kwargs)

    # -- the leader lease ----------------------------------------------------------------

    def on_elected(self, runs: Mapping[str, float]) -> None:
        """This beat became the sender: take the runs other beats recorded (the later of
        theirs and ours), and skip runs missed meanwhile by entries with ``catch_up=False``."""
        for name, entry in list(self.schedule.items()):
            recorded = runs.get(name)
            tz = entry.last_run_at.tzinfo or dt.UTC
            if recorded is not None and recorded > entry.last_run_at.timestamp():
                entry = self.schedule[name] = entry._copy(last_run_at=from_epoch(recorded, tz))
            if not entry.catch_up and self.is_due(entry)[0]:
                logger.info("beat: %s: skipping the run missed while no beat was sending "
                            "(catch_up=False)", name)
                entry = self.schedule[name] = entry._copy(last_run_at=entry.default_now())
                self.record(entry)
        self._heap = None

    # -- persistence (Celery's hooks) ----------------------------------------------------

    def should_sync(self) -> bool:
        return bool(
            (not self._last_sync or time.monotonic() - self._last_sync > self.sync_every)
            or (self.sync_every_tasks and self._tasks_since_sync >= self.sync_every_tasks)
        )

    def _do_sync(self) -> None:
        try:
            self.sync()
        finally:
            self._last_sync = time.monotonic()
            self._tasks_since_sync = 0

    def sync(self) -> None:
        """Write the schedule's state where it is kept (nothing for this base class)."""

    def close(self) -> None:
        self.sync()


def _schedule_of(value: Any, app: Celery) -> Any:
    """A schedule object from an entry's ``schedule`` (seconds, timedelta, a schedule, or a
    cron expression string); SchedulingError for anything else."""
    from ..schedules import crontab, maybe_schedule

    if isinstance(value, str):
        try:
            return crontab.from_string(value, app=app)
        except ValueError as exc:
            raise SchedulingError(f"bad cron expression {value!r}: {exc}") from None
    if isinstance(value, bool) or value is None:
        raise SchedulingError("'schedule' must be seconds, a timedelta, a cron string or a "
                              f"schedule object, not {value!r}")
    value = maybe_schedule(value, app=app)
    if not callable(getattr(value, "is_due", None)):
        raise SchedulingError("'schedule' must be seconds, a timedelta, a cron string or a "
                              f"schedule object, not {type(value).__name__}")
    return value
