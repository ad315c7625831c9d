"""Date, time-zone and interval helpers (Celery's ``celery.utils.time``).

The sun's position, which ``celery.schedules.solar`` needs, is in :mod:`celery.utils.sun`.

Every function here is pure (no clock is read unless a ``now`` is left out) and safe to call
from any thread.

Time zones are ``zoneinfo`` (or any ``tzinfo``); nothing here needs pytz or dateutil.
Arithmetic between instants is done in UTC: Python subtracts and adds aware datetimes that
share a ``tzinfo`` on their wall clocks, which is wrong across a DST change.
"""

from __future__ import annotations

import datetime as dt
import numbers
import re

__all__ = [
    "DAYNAMES",
    "MONTHNAMES",
    "WEEKDAYS",
    "YEARMONTHS",
    "delta_resolution",
    "humanize_seconds",
    "is_naive",
    "localize",
    "make_aware",
    "maybe_make_aware",
    "maybe_timedelta",
    "remaining",
    "to_utc",
    "weekday",
    "yearmonth",
]

DAYNAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: Three-letter day name -> cron day number (Sunday is 0).
WEEKDAYS = dict(zip(DAYNAMES, range(7), strict=True))
MONTHNAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
#: Three-letter month name -> month number (January is 1).
YEARMONTHS = dict(zip(MONTHNAMES, range(1, 13), strict=True))
_FULL_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_FULL_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")
_WORD = re.compile(r"[a-z]{3,}")

_TIME_UNITS = (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0), ("second", 1.0))


def _name_lookup(name: str, full_names: tuple[str, ...], first: int) -> int:
    word = name.strip().lower()
    if _WORD.fullmatch(word):
        for number, full in enumerate(full_names, first):
            if full.startswith(word):
                return number
    raise KeyError(name)


def weekday(name: str) -> int:
    """The cron number of a day name: ``"sun"``/``"sunday"`` is 0, ``"sat"`` is 6.

    Accepts, in any case, a day's full name or any start of it of three letters or more
    (``"tue"``, ``"tues"``); raises ``KeyError(name)`` for anything else.
    """
    return _name_lookup(name, _FULL_DAYS, 0)


def yearmonth(name: str) -> int:
    """The number of a month name: ``"jan"``/``"january"`` is 1, ``"dec"`` is 12.

    Same forms as :func:`weekday` (``"sep"``, ``"sept"``); ``KeyError(name)`` otherwise.
    """
    return _name_lookup(name, _FULL_MONTHS, 1)


def maybe_timedelta(delta: float | dt.timedelta) -> dt.timedelta:
    """A number of seconds as a timedelta; a timedelta unchanged.

    Raises:
        TypeError: ``delta`` is neither (``bool`` counts as neither).
    """
    if isinstance(delta, dt.timedelta):
        return delta
    if isinstance(delta, numbers.Real) and not isinstance(delta, bool):
        return dt.timedelta(seconds=float(delta))
    raise TypeError(f"expected seconds (a number) or a timedelta, not {type(delta).__name__}")


def is_naive(value: dt.datetime) -> bool:
    """True when ``value`` has no usable time zone."""
    return value.tzinfo is None or value.tzinfo.utcoffset(value) is None


def make_aware(value: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """Read the naive ``value`` as a wall-clock time in ``tz``.

    A wall time that happens twice (DST fall-back) is taken at its first occurrence; one
    that never happens (spring-forward gap) is moved forward by the gap (02:30 becomes 03:30
    when clocks jump from 02:00 to 03:00): both are what ``fold=0`` means (PEP 495).
    The result is normalized, so its fields show the real local time.
    """
    aware = value.replace(tzinfo=tz, fold=0)
    return aware.astimezone(dt.UTC).astimezone(tz)


def localize(value: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """``value`` in ``tz``: converted when aware, read as a wall time in ``tz`` when naive."""
    if is_naive(value):
        return make_aware(value, tz)
    return value.astimezone(tz)


def to_utc(value: dt.datetime) -> dt.datetime:
    """A naive ``value`` read as UTC (aware); an aware one converted to UTC."""
    if is_naive(value):
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def maybe_make_aware(value: dt.datetime, tz: dt.tzinfo | None = None,
                     naive_as_utc: bool = True) -> dt.datetime:
    """Make ``value`` aware; an aware one is returned unchanged.

    A naive ``value`` is read as UTC and converted to ``tz`` (default UTC), or, with
    ``naive_as_utc=False``, read as a wall time in ``tz`` (see :func:`make_aware`).
    """
    if not is_naive(value):
        return value
    zone = dt.UTC if tz is None else tz
    if naive_as_utc:
        return value.replace(tzinfo=dt.UTC).astimezone(zone)
    return make_aware(value, zone)


def delta_resolution(value: dt.datetime, delta: dt.timedelta) -> dt.datetime:
    """``value`` truncated to the coarsest unit ``delta`` spans: a day or more -> midnight,
    an hour or more -> the hour, a minute or more -> the minute; otherwise unchanged.

    Truncation happens on ``value``'s own wall clock; an aware result that lands in a DST gap
    is normalized (see :func:`make_aware`).
    """
    seconds = max(delta.total_seconds(), 0)
    if seconds >= 86400:
        cut = value.replace(hour=0, minute=0, second=0, microsecond=0)
    elif seconds >= 3600:
        cut = value.replace(minute=0, second=0, microsecond=0)
    elif seconds >= 60:
        cut = value.replace(second=0, microsecond=0)
    else:
        return value
    if cut.tzinfo is not None:
        return make_aware(cut.replace(tzinfo=None), cut.tzinfo)
    return cut


def remaining(start: dt.datetime, ends_in: dt.timedelta, now: dt.datetime | None = None,
              relative: bool = False) -> dt.timedelta:
    """How long from ``now`` until ``ends_in`` after ``start`` (negative when past).

    ``ends_in`` is elapsed time: it is added in UTC, so "one hour after" is one real hour
    even across a DST change (Celery adds it on the wall clock of ``start``'s zone).
    With ``relative``, the end is truncated to the resolution of ``ends_in``
    (:func:`delta_resolution`) on the wall clock of ``start``'s zone, then to the second.
    Naive datetimes are read as UTC; ``now`` defaults to the current time.
    """
    start_utc = to_utc(start)
    end = start_utc + ends_in
    if relative:
        zone = start.tzinfo if not is_naive(start) else dt.UTC
        end = delta_resolution(end.astimezone(zone), ends_in).replace(microsecond=0)
    now_utc = to_utc(now) if now is not None else dt.datetime.now(dt.UTC)
    return end.astimezone(dt.UTC) - now_utc


def humanize_seconds(secs: float, prefix: str = "", sep: str = "", now: str = "now",
                     microseconds: bool = False) -> str:
    """Seconds for people, as Celery words them: ``60`` -> ``"1.00 minute"``,
    ``7200`` -> ``"2.00 hours"``; ``0`` -> ``now``.

    Args:
        prefix: put before a duration (``"in "`` gives ``"in 1.00 second"``), not before
            ``now``.
        sep: put between ``prefix`` and the duration.
        now: the word for zero.
        microseconds: say ``"0.50 seconds"`` for durations under a second instead of ``now``.
    """
    secs = round(float(secs), 2)
    for unit, size in _TIME_UNITS:
        if secs >= size:
            amount = secs / size
            name = unit if amount == 1 else unit + "s"
            return f"{prefix}{sep}{amount:.2f} {name}"
    if microseconds and secs > 0:
        return f"{prefix}{sep}{secs:.2f} seconds"
    return now
