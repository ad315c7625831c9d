"""Crontab schedules: cron patterns, parsed, and matched against wall-clock times.

A :class:`crontab` matches wall-clock times in the schedule's zone (``tz``: the app's
``timezone`` setting, else UTC), and across DST changes:

- spring forward: a wall time that does not exist that day (02:30 when clocks jump from
  02:00 to 03:00) runs as if the clocks had not changed yet, i.e. the gap's length later
  (03:30 new time). That is PEP 495's reading (``fold=0``), and the instant Celery's own
  wall-clock arithmetic lands on; a daily 02:30 task thus still runs that day. When that
  instant is also a real matching time (03:30 itself), the task runs once.
- fall back: each matching wall time runs once, at its first occurrence (the one before
  the change): a daily 02:30 task does not run twice, and times in the repeated hour are not
  matched again, so an hourly task leaves a two-hour gap there (Celery does the same).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import CeleryError
from ..utils.time import make_aware, to_utc, weekday, yearmonth
from .base import BaseSchedule, schedstate

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["Cronspec", "ParseException", "cronfield", "crontab", "crontab_parser"]

#: A crontab field: an int, a cron pattern string, or an iterable of ints.
Cronspec = int | str | Iterable[int]

#: How far crontab looks for the next run: the Gregorian calendar repeats every 400 years.
_CRON_SEARCH_MONTHS = 400 * 12


class ParseException(CeleryError, ValueError):
    """A crontab pattern that cannot be parsed (:class:`crontab_parser`).

    Also a ``ValueError``, like every other error a bad crontab field raises, so one
    ``except ValueError`` catches them all.
    """


def cronfield(s: Cronspec | None) -> Cronspec:
    """``s``, with ``None`` meaning ``"*"``."""
    return "*" if s is None else s


class crontab_parser:
    """Expand one crontab field (``"*/15"``, ``"1-5,10"``, ``"mon-fri"``) to a set of ints.

    Grammar: parts separated by commas; each part is ``*``, a value, or a range ``a-b``,
    ``*`` and ranges optionally followed by ``/step``. A range whose end is below its start
    wraps round: ``fri-mon`` is Friday to Monday, ``22-2`` in hours is 22, 23, 0, 1, 2, and a
    step counts along it. Values are numbers in ``min_`` .. ``min_ + max_ - 1``, or, in the
    day-of-week parser (``max_=7``), day names (``sun``=0 .. ``sat``=6, full or from three
    letters, any case), or in the month parser (``max_=12, min_=1``) month names.
    Spaces round a part are ignored.

    Every error is a :class:`ParseException` (a ``ValueError``) that names the field, the
    pattern and what is wrong. Not supported, as in Celery: cron's ``L``, ``W``, ``#`` and
    ``?``, day 7 for Sunday, a step after a single value (``5/15``), negative numbers.

    >>> sorted(crontab_parser(60).parse("*/15"))
    [0, 15, 30, 45]
    >>> sorted(crontab_parser(7).parse("fri-mon"))
    [0, 1, 5, 6]
    """

    ParseException = ParseException

    _NUMBER = re.compile(r"[0-9]+")

    def __init__(self, max_: int = 60, min_: int = 0, field: str | None = None) -> None:
        self.max_ = max_
        self.min_ = min_
        self.field = field or "field"
        self._names: Callable[[str], int] | None = None
        self._wanted = "a number"
        if (max_, min_) == (7, 0):
            self._names, self._wanted = weekday, "a number or a day name"
        elif (max_, min_) == (12, 1):
            self._names, self._wanted = yearmonth, "a number or a month name"

    def parse(self, spec: str) -> set[int]:
        """The set of ints ``spec`` stands for."""
        if not isinstance(spec, str):
            raise TypeError(f"crontab {self.field}: a pattern is a str, not {type(spec).__name__}")
        values: set[int] = set()
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise self._error(spec, "empty part (two commas in a row, or nothing at all)")
            values.update(self._parse_part(part, spec))
        return values

    def _error(self, spec: str, why: str) -> ValueError:  # a ParseException
        return ParseException(f"Invalid crontab {self.field} {spec!r}: {why}")

    def _parse_part(self, part: str, spec: str) -> list[int]:
        base, slash, step_text = part.partition("/")
        base = base.strip()
        if base == "*":
            values = list(range(self.min_, self.min_ + self.max_))
        elif base.startswith("-"):
            raise self._error(spec, f"negative numbers are not supported ({part!r})")
        elif "-" in base:
            start, _, end = base.partition("-")
            values = self._range(self._value(start, spec), self._value(end, spec))
        elif slash:
            raise self._error(spec, f"a step needs '*' or a range before it, as in "
                                    f"'*/{step_text}' ({part!r})")
        else:
            return [self._value(base, spec)]
        if slash:
            return values[::self._step(step_text, spec)]
        return values

    def _range(self, start: int, end: int) -> list[int]:
        if end < start:  # wraps round the end of the field: fri-mon, 22-2
            return list(range(start, self.min_ + self.max_)) + list(range(self.min_, end + 1))
        return list(range(start, end + 1))

    def _step(self, text: str, spec: str) -> int:
        text = text.strip()
        if not self._NUMBER.fullmatch(text) or int(text) == 0:
            shown = repr(text) if text else "nothing"
            raise self._error(spec, f"a step is a whole number of 1 or more, not {shown}")
        return int(text)

    def _value(self, text: str, spec: str) -> int:
        text = text.strip()
        if self._NUMBER.fullmatch(text):
            value = int(text)
        else:
            value = self._name(text, spec)
        top = self.min_ + self.max_ - 1
        if not self.min_ <= value <= top:
            raise self._error(spec, f"{value} is out of range {self.min_}-{top}")
        return value

    def _name(self, text: str, spec: str) -> int:
        if self._names is not None:
            try:
                return self._names(text)
            except KeyError:
                pass
        if text.startswith("-"):
            raise self._error(spec, f"negative numbers are not supported ({text!r})")
        hint = ""
        if re.fullmatch(r"[0-9]*[LW?]|[0-9]+#[0-9]+|LW", text.upper()):
            hint = " (cron's L, W, # and ? forms are not supported)"
        raise self._error(spec, f"{text!r} is not {self._wanted}{hint}")


_REPR_KINDS = (str, int, list, tuple, set, frozenset, range)


def _field(spec: Cronspec | None, name: str, max_: int, min_: int) -> tuple[Cronspec, set[int]]:
    """``(what to show and pickle, the values)`` for one crontab field."""
    orig = cronfield(spec)
    values = crontab._expand_cronspec(orig, max_, min_, field=name)
    # A one-shot iterable (a generator) is kept as its values, so repr and pickle work.
    return (orig if isinstance(orig, _REPR_KINDS) else sorted(values)), values


class crontab(BaseSchedule):
    """Run at the wall-clock times in ``tz`` that match every field, like cron(5).

    Each field takes an int, a pattern (see :class:`crontab_parser`), or an iterable of
    ints; the parsed values are the attributes ``minute`` (0-59), ``hour`` (0-23),
    ``day_of_week`` (0-6, Sunday is 0), ``day_of_month`` (1-31) and ``month_of_year``
    (1-12), as sets; ``_orig_<field>`` keeps what was given.

    A day must match ``day_of_week``, ``day_of_month`` and ``month_of_year`` all three
    (Celery's rule; cron runs when either day field matches): ``day_of_week=1,
    day_of_month="1-7"`` is the first Monday of each month. A day that a month lacks (the
    31st in April, February 29th outside leap years) is skipped, not moved.
    See the module docstring for DST.

    Raises:
        ParseException: a pattern that cannot be parsed, or a number out of range
            (both ``ValueError``).
        ValueError: a value out of range in an int or iterable, an empty field, or day
            and month fields that never meet (``day_of_month=30, month_of_year=2``).
        TypeError: a field of another type.
    """

    def __init__(self, minute: Cronspec = "*", hour: Cronspec = "*",
                 day_of_week: Cronspec = "*", day_of_month: Cronspec = "*",
                 month_of_year: Cronspec = "*",
                 nowfun: Callable[[], dt.datetime] | None = None,
                 app: Celery | None = None) -> None:
        self._orig_minute, self.minute = _field(minute, "minute", 60, 0)
        self._orig_hour, self.hour = _field(hour, "hour", 24, 0)
        self._orig_day_of_week, self.day_of_week = _field(day_of_week, "day_of_week", 7, 0)
        self._orig_day_of_month, self.day_of_month = _field(
            day_of_month, "day_of_month", 31, 1)
        self._orig_month_of_year, self.month_of_year = _field(
            month_of_year, "month_of_year", 12, 1)
        self._check_dates_exist()
        super().__init__(nowfun=nowfun, app=app)

    @classmethod
    def from_string(cls, crontab: str, nowfun: Callable[[], dt.datetime] | None = None,
                    app: Celery | None = None) -> crontab:
        """A crontab from a cron line's five fields, in cron's order: ``"minute hour
        day-of-month month day-of-week"``, e.g. ``crontab.from_string("*/5 * * * 1-5")``."""
        fields = crontab.split()
        if len(fields) != 5:
            raise ParseException(
                f"Invalid crontab string {crontab!r}: expected 5 fields (minute hour "
                f"day-of-month month day-of-week), found {len(fields)}")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year,
                   nowfun=nowfun, app=app)

    @staticmethod
    def _expand_cronspec(cronspec: Cronspec, max_: int, min_: int = 0,
                         field: str | None = None) -> set[int]:
        """The set of ints a field stands for, checked against ``min_ .. min_+max_-1``."""
        name = field or "field"
        if isinstance(cronspec, str):
            return crontab_parser(max_, min_, field=name).parse(cronspec)
        if isinstance(cronspec, bool) or not isinstance(cronspec, int | Iterable):
            raise TypeError(f"crontab {name}: expected an int, a str or an iterable of ints, "
                            f"not {type(cronspec).__name__}")
        given: Iterable[object] = [cronspec] if isinstance(cronspec, int) else cronspec
        top = min_ + max_ - 1
        values: set[int] = set()
        for value in given:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"crontab {name}: values are ints, not {value!r}")
            if not min_ <= value <= top:
                raise ValueError(f"Invalid crontab {name}: {value} is out of range {min_}-{top}")
            values.add(value)
        if not values:
            raise ValueError(f"Invalid crontab {name}: no values given")
        return values

    def _check_dates_exist(self) -> None:
        longest = {month: calendar.monthrange(2000, month)[1] for month in self.month_of_year}
        if min(self.day_of_month) > max(longest.values()):
            raise ValueError(
                f"crontab never runs: day_of_month {self._orig_day_of_month!r} does not occur "
                f"in month_of_year {self._orig_month_of_year!r}")

    # -- finding the next run ---------------------------------------------------------------

    def _first_time(self, hour: int, minute: int) -> tuple[int, int] | None:
        """The first matching (hour, minute) at or after ``hour:minute`` in a day."""
        minutes = sorted(self.minute)
        if hour in self.hour:
            later = [m for m in minutes if m >= minute]
            if later:
                return hour, later[0]
        hours = [h for h in sorted(self.hour) if h > hour]
        return (hours[0], minutes[0]) if hours else None

    def _days_from(self, start: dt.date) -> Iterator[dt.date]:
        """The matching dates from ``start`` on, in order."""
        days = sorted(self.day_of_month)
        year, month = start.year, start.month
        for _ in range(_CRON_SEARCH_MONTHS):
            if month in self.month_of_year:
                length = calendar.monthrange(year, month)[1]
                for day in days:
                    if day > length:
                        break
                    date = dt.date(year, month, day)
                    if date >= start and date.isoweekday() % 7 in self.day_of_week:
                        yield date
            month, year = (1, year + 1) if month == 12 else (month + 1, year)
            if year > dt.MAXYEAR:
                break
        raise RuntimeError(f"{self!r}: no matching date found after {start}")

    def _next_wall(self, after: dt.datetime) -> dt.datetime:
        """The first matching naive wall time (whole minutes) after the naive ``after``."""
        start = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        for date in self._days_from(start.date()):
            hm = self._first_time(start.hour, start.minute) if date == start.date() \
                else self._first_time(0, 0)
            if hm is not None:
                return dt.datetime.combine(date, dt.time(*hm))
        raise AssertionError("unreachable: _days_from raises when it runs out")

    def _next_after(self, last: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
        """The first run strictly after the aware instant ``last``, in UTC.

        Walks matching wall times in ``tz`` from ``last``'s and takes the first whose
        instant (first occurrence; a nonexistent time moved forward by the gap) is later
        than ``last``: this is where the DST rules of the module docstring come from.
        """
        last_utc = last.astimezone(dt.UTC)
        wall = last_utc.astimezone(tz).replace(tzinfo=None)
        while True:
            wall = self._next_wall(wall)
            candidate = make_aware(wall, tz).astimezone(dt.UTC)
            if candidate > last_utc:
                return candidate

    def remaining_delta(self, last_run_at: dt.datetime, tz: dt.tzinfo | None = None,
                        ) -> tuple[dt.datetime, dt.timedelta, dt.datetime]:
        """``(last_run_at, delta, now)``: the next run is ``delta`` (elapsed time) after
        ``last_run_at``; both datetimes aware, in ``tz`` (default ``self.tz``), and given
        to :meth:`to_local`. ``celery.utils.time.remaining(*result)`` is the time left."""
        zone = tz or self.tz
        last = self.maybe_make_aware(last_run_at).astimezone(zone)
        now = self.maybe_make_aware(self.now()).astimezone(zone)
        delta = self._next_after(last, zone) - last.astimezone(dt.UTC)
        return self.to_local(last), delta, self.to_local(now)

    def remaining_estimate(self, last_run_at: dt.datetime) -> dt.timedelta:
        """Time from now until the first run after ``last_run_at`` (negative when overdue)."""
        last = self.maybe_make_aware(last_run_at)
        now = to_utc(self.maybe_make_aware(self.now()))
        return self._next_after(last, self.tz) - now

    def is_due(self, last_run_at: dt.datetime) -> schedstate:
        """``(True, seconds until the run after this one)`` when a run fell due since
        ``last_run_at``, else ``(False, seconds until it does)``.

        With the ``beat_cron_starting_deadline`` setting (seconds), a missed run counts only
        while it is at most that old: when the latest run time that has passed is older (say
        beat was down), the task is not run now but at its next time.
        """
        last = to_utc(self.maybe_make_aware(last_run_at))
        now = to_utc(self.maybe_make_aware(self.now()))
        tz = self.tz
        next_run = self._next_after(last, tz)
        due = next_run <= now
        if due and self._missed_deadline(last, now, tz):
            due = False
            next_run = now  # ask again at the next run time after now
        if next_run <= now:
            next_run = self._next_after(now, tz)
        return schedstate(due, max((next_run - now).total_seconds(), 0))

    def _missed_deadline(self, last: dt.datetime, now: dt.datetime, tz: dt.tzinfo) -> bool:
        deadline = self.app.conf.get("beat_cron_starting_deadline")
        if deadline is None:
            return False
        floor = now - dt.timedelta(seconds=deadline)
        if floor <= last:
            return False
        # the first run time at or after the floor: none before now means all were missed
        return self._next_after(floor - dt.timedelta(microseconds=1), tz) > now

    def __repr__(self) -> str:
        return (f"<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} "
                f"{self._orig_month_of_year} {self._orig_day_of_week} (m/h/dM/MY/d)>")

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (self._orig_minute, self._orig_hour, self._orig_day_of_week,
                  self._orig_day_of_month, self._orig_month_of_year)
        return self.__class__, fields, {"nowfun": self.nowfun}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        # Celery pickles the keyword arguments (nowfun, app) as the state.
        BaseSchedule.__init__(self, nowfun=state.get("nowfun"), app=state.get("app"))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return (other.month_of_year == self.month_of_year
                    and other.day_of_month == self.day_of_month
                    and other.day_of_week == self.day_of_week
                    and other.hour == self.hour
                    and other.minute == self.minute
                    and super().__eq__(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
