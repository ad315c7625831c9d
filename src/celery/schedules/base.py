"""The schedule contract, the base every schedule shares, and the interval schedule.

A schedule answers ``is_due(last_run_at)`` with a :data:`schedstate` ``(is_due, next)``:
whether the task should run now, and in how many seconds to ask again. Naive datetimes
(``last_run_at``, or what ``nowfun`` returns) are read as UTC, as in Celery.

An interval (:class:`schedule`) counts elapsed time, so "every hour" is every 60 real
minutes whatever the clocks do.
"""

from __future__ import annotations

import datetime as dt
import numbers
from collections import namedtuple
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._state import get_current_app
from ..utils.time import humanize_seconds, maybe_make_aware, maybe_timedelta, remaining

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["BaseSchedule", "maybe_schedule", "schedstate", "schedule"]

#: ``is_due``'s answer: ``is_due`` (bool) and ``next`` (seconds until the next check).
schedstate = namedtuple("schedstate", ("is_due", "next"))


class BaseSchedule:
    """What every schedule has: a clock (``nowfun`` or the app's), a time zone and an app.

    Schedules hold no state that ``is_due`` changes, so one may be used from any thread;
    ``app`` and ``tz`` are plain attributes to set before sharing it.
    """

    def __init__(self, nowfun: Callable[[], dt.datetime] | None = None,
                 app: Celery | None = None) -> None:
        self.nowfun = nowfun
        self._app = app
        self._tz: dt.tzinfo | None = None

    def now(self) -> dt.datetime:
        """The current time, from ``nowfun`` if given, else ``app.now()``."""
        return (self.nowfun or self.app.now)()

    def remaining_estimate(self, last_run_at: dt.datetime) -> dt.timedelta:
        raise NotImplementedError

    def is_due(self, last_run_at: dt.datetime) -> schedstate:
        raise NotImplementedError

    def maybe_make_aware(self, value: dt.datetime, naive_as_utc: bool = True) -> dt.datetime:
        """``value`` made aware: a naive one is read as UTC and shown in ``tz`` (or read as a
        wall time in ``tz`` with ``naive_as_utc=False``); an aware one is returned as is."""
        return maybe_make_aware(value, self.tz, naive_as_utc=naive_as_utc)

    @property
    def app(self) -> Celery:
        """The app given, else the current app (looked up on each access)."""
        return self._app if self._app is not None else get_current_app()

    @app.setter
    def app(self, app: Celery | None) -> None:
        self._app = app

    @property
    def tz(self) -> dt.tzinfo:
        """The zone crontab fields are read in: ``app.timezone`` unless set here."""
        return self._tz if self._tz is not None else self.app.timezone

    @tz.setter
    def tz(self, tz: dt.tzinfo | None) -> None:
        self._tz = tz

    @property
    def utc_enabled(self) -> bool:
        return bool(self.app.conf.enable_utc)

    def to_local(self, value: dt.datetime) -> dt.datetime:
        """``value`` unchanged, or in the machine's local zone when ``enable_utc`` is off
        (naive: read as local), as Celery."""
        if not self.utc_enabled:
            return value.astimezone()
        return value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BaseSchedule):
            return other.nowfun == self.nowfun
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: as Celery


class schedule(BaseSchedule):
    """Run every ``run_every`` (seconds or a timedelta) of elapsed time.

    Args:
        run_every: the interval.
        relative: round each due time down to the interval's resolution in ``tz``: a
            daily schedule runs at midnight, an hourly one on the hour, one of minutes on
            the minute.
        nowfun: returns the current datetime (default ``app.now``).
        app: the app (default: the current one).
    """

    relative: bool = False

    def __init__(self, run_every: float | dt.timedelta, relative: bool = False,
                 nowfun: Callable[[], dt.datetime] | None = None,
                 app: Celery | None = None) -> None:
        self.run_every = maybe_timedelta(run_every)
        self.relative = relative
        super().__init__(nowfun=nowfun, app=app)

    def remaining_estimate(self, last_run_at: dt.datetime) -> dt.timedelta:
        """Time from now until ``run_every`` after ``last_run_at`` (negative when overdue)."""
        start = self.maybe_make_aware(last_run_at).astimezone(self.tz)
        return remaining(start, self.run_every, self.maybe_make_aware(self.now()),
                         self.relative)

    def is_due(self, last_run_at: dt.datetime) -> schedstate:
        """``(True, seconds)`` when due (``seconds`` being the interval: ask again then),
        else ``(False, seconds until due)``.

        The scheduler may wake earlier (``beat_max_loop_interval`` caps its sleep); ``next``
        only saves it from polling.
        """
        rem = max(self.remaining_estimate(last_run_at).total_seconds(), 0)
        if rem == 0:
            return schedstate(is_due=True, next=self.seconds)
        return schedstate(is_due=False, next=rem)

    @property
    def seconds(self) -> float:
        return max(self.run_every.total_seconds(), 0)

    @property
    def human_seconds(self) -> str:
        return humanize_seconds(self.seconds)

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every
        return self.run_every == other

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


def maybe_schedule(s: float | dt.timedelta | BaseSchedule | None, relative: bool = False,
                   app: Celery | None = None) -> BaseSchedule | None:
    """A schedule from seconds or a timedelta (an interval :class:`schedule`); a schedule
    object is returned itself, given ``app`` when one is passed; ``None`` stays ``None``."""
    if s is None:
        return None
    if isinstance(s, dt.timedelta | numbers.Real) and not isinstance(s, bool):
        return schedule(s, relative, app=app)
    duck: Any = s  # a BaseSchedule, or any object with is_due (as Celery accepts)
    if not callable(getattr(duck, "is_due", None)):
        raise TypeError(f"not a schedule (seconds, a timedelta or an object with is_due): {s!r}")
    if app is not None:
        duck.app = app
    return duck
