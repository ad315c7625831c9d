"""celery.schedules: interval, crontab and solar schedules, and their DST, calendar and
polar edge cases. Every clock is fixed with ``nowfun``; no network."""

from __future__ import annotations

import datetime as dt
import pickle
import zoneinfo

import pytest

from celery import Celery, _state
from celery.exceptions import CeleryError
from celery.schedules import (
    BaseSchedule,
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    schedstate,
    schedule,
    solar,
)
from celery.utils.time import humanize_seconds, remaining, weekday, yearmonth

UTC = dt.UTC
PARIS = "Europe/Paris"
NEW_YORK = "America/New_York"


def at(text: str) -> dt.datetime:
    """An aware datetime from ISO text (``Z`` or an offset)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def fixed(when: dt.datetime):
    return lambda: when


def tick() -> dt.datetime:  # a module-level nowfun: picklable
    return dt.datetime(2026, 1, 1, tzinfo=UTC)


_APPS: dict[tuple[str | None, object], Celery] = {}


def app_in(zone: str | None = None, deadline: float | None = None) -> Celery:
    """An app whose ``timezone`` is ``zone`` (None: unset, so UTC)."""
    key = (zone, deadline)
    if key not in _APPS:
        _APPS[key] = Celery("test-schedules", set_as_current=False, timezone=zone,
                            beat_cron_starting_deadline=deadline)
    return _APPS[key]


def next_run(sched: BaseSchedule, last: dt.datetime) -> dt.datetime:
    """When ``sched`` runs next after ``last``, through the public API (now = last)."""
    sched.nowfun = fixed(last)
    return last + sched.remaining_estimate(last)


# -- crontab_parser: accepted forms ---------------------------------------------------------

MINUTES, HOURS, DOW, DOM, MONTHS = (60, 0), (24, 0), (7, 0), (31, 1), (12, 1)


@pytest.mark.parametrize(("field", "spec", "expected"), [
    (MINUTES, "*", set(range(60))),
    (MINUTES, "*/15", {0, 15, 30, 45}),
    (MINUTES, "*/100", {0}),
    (MINUTES, "5", {5}),
    (MINUTES, "0-59", set(range(60))),
    (MINUTES, "1-5", {1, 2, 3, 4, 5}),
    (MINUTES, "1-10/2", {1, 3, 5, 7, 9}),
    (MINUTES, "1,13,30-45,50-59/2",
     {1, 13, *range(30, 46), 50, 52, 54, 56, 58}),
    (MINUTES, " 5 , 10 ", {5, 10}),
    (MINUTES, "*/20,7", {0, 20, 40, 7}),
    (MINUTES, "50-10/5", {50, 55, 0, 5, 10}),
    (HOURS, "*/4", {0, 4, 8, 12, 16, 20}),
    (HOURS, "0,8-17/2", {0, 8, 10, 12, 14, 16}),
    (HOURS, "22-2", {22, 23, 0, 1, 2}),
    (HOURS, "22-2/2", {22, 0, 2}),
    (HOURS, "23", {23}),
    (DOW, "*", set(range(7))),
    (DOW, "*/2", {0, 2, 4, 6}),
    (DOW, "mon-fri", {1, 2, 3, 4, 5}),
    (DOW, "MON-Fri", {1, 2, 3, 4, 5}),
    (DOW, "sun,wed", {0, 3}),
    (DOW, "fri-mon", {5, 6, 0, 1}),
    (DOW, "mon-sun", set(range(7))),
    (DOW, "monday", {1}),
    (DOW, "tues,thurs", {2, 4}),
    (DOW, "sat-sun", {6, 0}),
    (DOW, "0-2,sat", {0, 1, 2, 6}),
    (DOW, "mon-fri/2", {1, 3, 5}),
    (DOM, "*", set(range(1, 32))),
    (DOM, "*/3", {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31}),
    (DOM, "2-30/2", set(range(2, 31, 2))),
    (DOM, "1-7,15-21", {*range(1, 8), *range(15, 22)}),
    (DOM, "31", {31}),
    (DOM, "28-3", {28, 29, 30, 31, 1, 2, 3}),
    (MONTHS, "*", set(range(1, 13))),
    (MONTHS, "*/2", {1, 3, 5, 7, 9, 11}),
    (MONTHS, "2-12/2", {2, 4, 6, 8, 10, 12}),
    (MONTHS, "*/3", {1, 4, 7, 10}),
    (MONTHS, "jan-mar", {1, 2, 3}),
    (MONTHS, "nov-feb", {11, 12, 1, 2}),
    (MONTHS, "sept,December", {9, 12}),
])
def test_parser_accepts(field, spec, expected):
    assert crontab_parser(*field).parse(spec) == expected


# -- crontab_parser: rejected forms ---------------------------------------------------------

@pytest.mark.parametrize(("field", "spec", "why"), [
    (MINUTES, "", "empty part"),
    (MINUTES, "1,,2", "empty part"),
    (MINUTES, "1,", "empty part"),
    (MINUTES, "*/", "a step is a whole number of 1 or more, not nothing"),
    (MINUTES, "1-5/", "not nothing"),
    (MINUTES, "*/0", "not '0'"),
    (MINUTES, "*/x", "not 'x'"),
    (MINUTES, "*/1.5", "not '1.5'"),
    (MINUTES, "1-10/2/3", "not '2/3'"),
    (MINUTES, "5/15", "a step needs '*' or a range"),
    (MINUTES, "-5", "negative numbers are not supported"),
    (MINUTES, "60", "60 is out of range 0-59"),
    (MINUTES, "1-60", "60 is out of range 0-59"),
    (MINUTES, "1-5-7", "'5-7' is not a number"),
    (MINUTES, "**", "'**' is not a number"),
    (MINUTES, "*-5", "'*' is not a number"),
    (MINUTES, "1.5", "'1.5' is not a number"),
    (MINUTES, "mon", "'mon' is not a number"),
    (HOURS, "24", "24 is out of range 0-23"),
    (HOURS, "jan", "'jan' is not a number"),
    (DOW, "7", "7 is out of range 0-6"),
    (DOW, "jan", "'jan' is not a number or a day name"),
    (DOW, "monkey", "'monkey' is not a number or a day name"),
    (DOW, "mo", "'mo' is not a number or a day name"),
    (DOW, "5L", "L, W, # and ? forms are not supported"),
    (DOW, "1#2", "L, W, # and ? forms are not supported"),
    (DOW, "?", "L, W, # and ? forms are not supported"),
    (DOM, "0", "0 is out of range 1-31"),
    (DOM, "32", "32 is out of range 1-31"),
    (DOM, "L", "L, W, # and ? forms are not supported"),
    (DOM, "15W", "L, W, # and ? forms are not supported"),
    (MONTHS, "0", "0 is out of range 1-12"),
    (MONTHS, "13", "13 is out of range 1-12"),
    (MONTHS, "mon", "'mon' is not a number or a month name"),
])
def test_parser_rejects(field, spec, why):
    with pytest.raises(ParseException) as info:
        crontab_parser(*field).parse(spec)
    assert why in str(info.value)
    assert f"{spec!r}" in str(info.value)


def test_parse_errors_are_value_errors_in_celerys_tree():
    assert issubclass(ParseException, ValueError)
    assert issubclass(ParseException, CeleryError)
    assert crontab_parser.ParseException is ParseException


@pytest.mark.parametrize(("kwargs", "field", "value"), [
    ({"minute": "61"}, "minute", "'61'"),
    ({"hour": "*/0"}, "hour", "'*/0'"),
    ({"day_of_week": "sun-L"}, "day_of_week", "'sun-L'"),
    ({"day_of_month": "0-5"}, "day_of_month", "'0-5'"),
    ({"month_of_year": "jan-mon"}, "month_of_year", "'jan-mon'"),
])
def test_crontab_errors_name_the_field_and_the_pattern(kwargs, field, value):
    with pytest.raises(ParseException) as info:
        crontab(**kwargs)
    assert f"Invalid crontab {field} {value}" in str(info.value)


# -- crontab: field types -----------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    (7, {7}),
    ([0, 15, 30], {0, 15, 30}),
    ({0, 30}, {0, 30}),
    ((5, 6), {5, 6}),
    (range(0, 60, 20), {0, 20, 40}),
    ((m for m in (1, 2)), {1, 2}),
    (None, set(range(60))),
    ("*/30", {0, 30}),
])
def test_crontab_field_types(spec, expected):
    assert crontab(minute=spec).minute == expected


@pytest.mark.parametrize(("kwargs", "error", "why"), [
    ({"minute": 5.0}, TypeError, "not float"),
    ({"minute": True}, TypeError, "not bool"),
    ({"hour": ["1"]}, TypeError, "values are ints, not '1'"),
    ({"hour": {24}}, ValueError, "hour: 24 is out of range 0-23"),
    ({"day_of_month": [0]}, ValueError, "day_of_month: 0 is out of range 1-31"),
    ({"day_of_week": []}, ValueError, "day_of_week: no values given"),
    ({"day_of_month": 30, "month_of_year": 2}, ValueError, "never runs"),
    ({"day_of_month": 31, "month_of_year": "apr,jun,sep,nov"}, ValueError, "never runs"),
])
def test_crontab_rejects(kwargs, error, why):
    with pytest.raises(error) as info:
        crontab(**kwargs)
    assert why in str(info.value)


def test_crontab_keeps_given_fields_and_reprs_them():
    c = crontab(minute="*/15", hour=[8, 9], day_of_week="mon-fri")
    assert (c._orig_minute, c._orig_hour, c._orig_day_of_week) == ("*/15", [8, 9], "mon-fri")
    assert (c._orig_day_of_month, c._orig_month_of_year) == ("*", "*")
    assert repr(c) == "<crontab: */15 [8, 9] * * mon-fri (m/h/dM/MY/d)>"
    assert c.minute == {0, 15, 30, 45} and c.day_of_week == {1, 2, 3, 4, 5}


def test_crontab_from_string_uses_crons_field_order():
    c = crontab.from_string("0  9 1-7 jan-mar mon")
    assert c == crontab(minute=0, hour=9, day_of_week="mon", day_of_month="1-7",
                        month_of_year="jan-mar")
    assert crontab.from_string("*/5 * * * *") == crontab(minute="*/5")
    assert crontab.from_string("*/5 * * * *").minute == set(range(0, 60, 5))


@pytest.mark.parametrize("line", ["* * * *", "* * * * * *", "", "@daily"])
def test_crontab_from_string_needs_five_fields(line):
    with pytest.raises(ParseException, match="expected 5 fields"):
        crontab.from_string(line)


def test_crontab_equality():
    assert crontab(minute="0,30") == crontab(minute=[30, 0])
    assert crontab(day_of_week="sun") == crontab(day_of_week=0)
    assert crontab(minute=0) != crontab(minute=1)
    assert crontab(minute=0, hour=1) != crontab(minute=0, hour=2)
    assert crontab(minute=0) != crontab(minute=0, nowfun=tick)
    assert crontab() != schedule(60)


def test_crontab_pickles():
    c = crontab(minute="*/5", hour=[1, 2], day_of_week="mon-fri", day_of_month="1-15",
                month_of_year="jan", nowfun=tick)
    back = pickle.loads(pickle.dumps(c))
    assert back == c
    assert back.nowfun is tick
    assert back.hour == {1, 2} and back._orig_day_of_week == "mon-fri"
    assert repr(back) == repr(c)


def test_crontab_reads_celerys_pickled_state():
    # Celery pickles (class, the five fields, the keyword arguments as state).
    app = app_in(PARIS)
    c = crontab("0", "9", "*", "*", "*")
    c.__setstate__({"nowfun": tick, "app": app})
    assert c.nowfun is tick and c.app is app


# -- crontab: the next run ------------------------------------------------------------------

NEXT_RUNS = [
    # zone, fields, last run, next run (in the zone)
    # Paris, spring forward 2026-03-29 02:00 CET -> 03:00 CEST
    (PARIS, {"minute": 30, "hour": 2}, "2026-03-28T02:30+01:00", "2026-03-29T03:30+02:00"),
    (PARIS, {"minute": 30, "hour": 2}, "2026-03-29T03:30+02:00", "2026-03-30T02:30+02:00"),
    (PARIS, {"minute": 30}, "2026-03-29T01:30+01:00", "2026-03-29T03:30+02:00"),
    (PARIS, {"minute": 30}, "2026-03-29T03:30+02:00", "2026-03-29T04:30+02:00"),
    (PARIS, {"minute": "0,30"}, "2026-03-29T01:45+01:00", "2026-03-29T03:00+02:00"),
    (PARIS, {"minute": "0,30"}, "2026-03-29T03:00+02:00", "2026-03-29T03:30+02:00"),
    (PARIS, {"minute": 0, "hour": 3}, "2026-03-28T03:00+01:00", "2026-03-29T03:00+02:00"),
    # Paris, fall back 2026-10-25 03:00 CEST -> 02:00 CET: 02:xx happens twice
    (PARIS, {"minute": 30, "hour": 2}, "2026-10-24T02:30+02:00", "2026-10-25T02:30+02:00"),
    (PARIS, {"minute": 30, "hour": 2}, "2026-10-25T02:30+02:00", "2026-10-26T02:30+01:00"),
    (PARIS, {"minute": 30, "hour": 2}, "2026-10-25T02:10+01:00", "2026-10-26T02:30+01:00"),
    (PARIS, {"minute": 30}, "2026-10-25T01:30+02:00", "2026-10-25T02:30+02:00"),
    (PARIS, {"minute": 30}, "2026-10-25T02:30+02:00", "2026-10-25T03:30+01:00"),
    (PARIS, {"minute": "*/15"}, "2026-10-25T02:50+01:00", "2026-10-25T03:00+01:00"),
    (PARIS, {"minute": 0, "hour": 0}, "2026-10-24T00:00+02:00", "2026-10-25T00:00+02:00"),
    (PARIS, {"minute": 0, "hour": 0}, "2026-10-25T00:00+02:00", "2026-10-26T00:00+01:00"),
    # New York, spring forward 2026-03-08 02:00 EST -> 03:00 EDT
    (NEW_YORK, {"minute": 15, "hour": 2}, "2026-03-07T02:15-05:00", "2026-03-08T03:15-04:00"),
    (NEW_YORK, {"minute": 15, "hour": 2}, "2026-03-08T03:15-04:00", "2026-03-09T02:15-04:00"),
    # New York, fall back 2026-11-01 02:00 EDT -> 01:00 EST: 01:xx happens twice
    (NEW_YORK, {"minute": 30, "hour": 1}, "2026-10-31T01:30-04:00", "2026-11-01T01:30-04:00"),
    (NEW_YORK, {"minute": 30, "hour": 1}, "2026-11-01T01:30-04:00", "2026-11-02T01:30-05:00"),
    (NEW_YORK, {"minute": 0}, "2026-11-01T01:00-04:00", "2026-11-01T02:00-05:00"),
    # month ends: a day a month lacks is skipped
    (None, {"minute": 0, "hour": 0, "day_of_month": 31}, "2026-01-31T00:00Z",
     "2026-03-31T00:00+00:00"),
    (None, {"minute": 0, "hour": 0, "day_of_month": 31}, "2026-03-31T00:00Z",
     "2026-05-31T00:00+00:00"),
    (None, {"minute": 0, "hour": 0, "day_of_month": 30}, "2026-01-30T12:00Z",
     "2026-03-30T00:00+00:00"),
    (None, {"minute": 0, "hour": 12, "day_of_month": "29-31"}, "2026-01-31T12:00Z",
     "2026-03-29T12:00+00:00"),
    (PARIS, {"minute": 0, "hour": 0, "day_of_month": 31}, "2026-03-31T00:00+02:00",
     "2026-05-31T00:00+02:00"),
    # leap years: February 29th only in 2028 and 2032
    (None, {"minute": 0, "hour": 0, "day_of_month": 29, "month_of_year": 2},
     "2026-01-01T00:00Z", "2028-02-29T00:00+00:00"),
    (None, {"minute": 0, "hour": 0, "day_of_month": 29, "month_of_year": 2},
     "2028-02-29T00:00Z", "2032-02-29T00:00+00:00"),
    (None, {"minute": 0, "hour": 0, "day_of_month": "28,29", "month_of_year": 2},
     "2027-02-28T00:00Z", "2028-02-28T00:00+00:00"),
    # day_of_week and day_of_month must both match
    (None, {"minute": 0, "hour": 0, "day_of_week": "mon", "day_of_month": "1-7"},
     "2026-01-01T00:00Z", "2026-01-05T00:00+00:00"),
    (None, {"minute": 0, "hour": 0, "day_of_week": "mon", "day_of_month": "1-7"},
     "2026-01-05T00:00Z", "2026-02-02T00:00+00:00"),
    (None, {"minute": 0, "hour": 13, "day_of_week": "fri", "day_of_month": 13},
     "2026-01-01T00:00Z", "2026-02-13T13:00+00:00"),
    (None, {"minute": 0, "hour": 13, "day_of_week": "fri", "day_of_month": 13},
     "2026-03-13T13:00Z", "2026-11-13T13:00+00:00"),
    # days of the week, wrapping ranges, months, years
    (None, {"minute": 0, "hour": 9, "day_of_week": "fri-mon"}, "2026-01-06T10:00Z",
     "2026-01-09T09:00+00:00"),
    (None, {"minute": 0, "hour": 9, "day_of_week": "mon-fri"}, "2026-01-02T09:00Z",
     "2026-01-05T09:00+00:00"),
    (None, {"minute": 0, "hour": 0, "day_of_month": 1, "month_of_year": "jan,jul"},
     "2026-01-01T00:00Z", "2026-07-01T00:00+00:00"),
    (None, {"minute": 0, "hour": 0, "day_of_month": 1, "month_of_year": 1},
     "2026-06-01T00:00Z", "2027-01-01T00:00+00:00"),
    (None, {"minute": "*/15"}, "2026-01-01T10:00Z", "2026-01-01T10:15+00:00"),
    (None, {"minute": "*/15"}, "2026-01-01T10:07:31Z", "2026-01-01T10:15+00:00"),
    (None, {"minute": "*/15"}, "2026-12-31T23:59Z", "2027-01-01T00:00+00:00"),
    (None, {"minute": 5, "hour": "*/6"}, "2026-01-01T06:05Z", "2026-01-01T12:05+00:00"),
    (None, {}, "2026-01-01T10:00:59Z", "2026-01-01T10:01+00:00"),
    # a UTC last run is read in the schedule's zone
    (PARIS, {"minute": 0, "hour": 9}, "2026-01-05T08:00Z", "2026-01-06T09:00+01:00"),
    (NEW_YORK, {"minute": 0, "hour": 9}, "2026-07-01T12:00Z", "2026-07-01T09:00-04:00"),
]


@pytest.mark.parametrize(("zone", "fields", "last", "expected"), NEXT_RUNS)
def test_crontab_next_run(zone, fields, last, expected):
    c = crontab(**fields, app=app_in(zone))
    when = next_run(c, at(last))
    shown = when.astimezone(zoneinfo.ZoneInfo(zone) if zone else UTC)
    assert shown.isoformat(timespec="minutes") == expected


def test_crontab_spring_forward_runs_a_collapsed_time_once():
    # 02:30 does not exist on 2026-03-29 in Paris: it lands on 03:30, run only once.
    c = crontab(minute=30, app=app_in(PARIS))
    last = at("2026-03-29T00:30+01:00")
    runs = []
    for _ in range(4):
        last = next_run(c, last)
        runs.append(last.astimezone(zoneinfo.ZoneInfo(PARIS)).isoformat(timespec="minutes"))
    assert runs == ["2026-03-29T01:30+01:00", "2026-03-29T03:30+02:00",
                    "2026-03-29T04:30+02:00", "2026-03-29T05:30+02:00"]


def test_crontab_fall_back_never_runs_a_daily_time_twice():
    c = crontab(minute="*/20", hour=2, app=app_in(PARIS))
    last = at("2026-10-24T23:00Z")
    runs = []
    for _ in range(4):
        last = next_run(c, last)
        runs.append(last.isoformat(timespec="minutes"))
    assert runs == ["2026-10-25T00:00+00:00", "2026-10-25T00:20+00:00",
                    "2026-10-25T00:40+00:00", "2026-10-26T01:00+00:00"]


def test_crontab_remaining_delta_matches_remaining_estimate():
    c = crontab(minute=30, hour=2, app=app_in(PARIS),
                nowfun=fixed(at("2026-03-28T12:00Z")))
    last_local, delta, now_local = c.remaining_delta(at("2026-03-28T01:30Z"))
    assert last_local.tzinfo == zoneinfo.ZoneInfo(PARIS)
    assert delta == dt.timedelta(hours=24)  # 02:30 CET -> 03:30 CEST: 24 real hours
    assert now_local == at("2026-03-28T12:00Z")
    assert remaining(last_local, delta, now_local) == c.remaining_estimate(
        at("2026-03-28T01:30Z"))
    assert c.remaining_estimate(at("2026-03-28T01:30Z")) == dt.timedelta(hours=13, minutes=30)


def test_crontab_with_dates_that_never_meet_fails_clearly():
    c = crontab(minute=0, hour=0, day_of_month=31, app=app_in())
    c.month_of_year = {2}  # past the constructor's check, as a mutated schedule could be
    with pytest.raises(RuntimeError, match="no matching date"):
        c.remaining_estimate(at("2026-01-01T00:00Z"))


# -- crontab: is_due ------------------------------------------------------------------------

@pytest.mark.parametrize(("last", "now", "expected"), [
    ("2026-01-01T10:00Z", "2026-01-01T10:14:30Z", (False, 30.0)),
    ("2026-01-01T10:00Z", "2026-01-01T10:15:00Z", (True, 900.0)),
    ("2026-01-01T10:00Z", "2026-01-01T10:20:00Z", (True, 600.0)),
    ("2026-01-01T10:00Z", "2026-01-03T08:59:00Z", (True, 60.0)),
    ("2026-01-01T10:15Z", "2026-01-01T10:15:10Z", (False, 890.0)),
])
def test_crontab_is_due(last, now, expected):
    c = crontab(minute="*/15", app=app_in(), nowfun=fixed(at(now)))
    result = c.is_due(at(last))
    assert isinstance(result, schedstate)
    assert result == expected


def test_crontab_is_due_in_the_schedules_zone():
    c = crontab(minute=0, hour=9, app=app_in(PARIS))
    c.nowfun = fixed(at("2026-01-06T07:59Z"))  # 08:59 in Paris
    assert c.is_due(at("2026-01-05T08:00Z")) == (False, 60.0)
    c.nowfun = fixed(at("2026-01-06T08:00Z"))  # 09:00 in Paris
    assert c.is_due(at("2026-01-05T08:00Z")) == (True, 86400.0)


def test_crontab_reads_naive_datetimes_as_utc():
    c = crontab(minute=0, hour=9, app=app_in(PARIS),
                nowfun=lambda: dt.datetime(2026, 1, 6, 7, 59))
    assert c.is_due(dt.datetime(2026, 1, 5, 8, 0)) == (False, 60.0)


@pytest.mark.parametrize(("deadline", "fields", "last", "now", "expected"), [
    # hourly; missed the 11:00 run, 30 minutes ago
    (None, {"minute": 0}, "2026-01-01T10:00Z", "2026-01-01T11:30Z", (True, 1800.0)),
    (3600, {"minute": 0}, "2026-01-01T10:00Z", "2026-01-01T11:30Z", (True, 1800.0)),
    (1800, {"minute": 0}, "2026-01-01T10:00Z", "2026-01-01T11:30Z", (True, 1800.0)),
    (600, {"minute": 0}, "2026-01-01T10:00Z", "2026-01-01T11:30Z", (False, 1800.0)),
    # daily at 09:00; beat was down for days; the latest run time is what counts
    (600, {"minute": 0, "hour": 9}, "2026-01-01T09:00Z", "2026-01-05T09:05Z", (True, 86100.0)),
    (60, {"minute": 0, "hour": 9}, "2026-01-01T09:00Z", "2026-01-05T09:05Z", (False, 86100.0)),
    (0, {"minute": 0, "hour": 9}, "2026-01-01T09:00Z", "2026-01-05T09:00Z", (True, 86400.0)),
    # not due: the deadline changes nothing
    (60, {"minute": 0}, "2026-01-01T10:00Z", "2026-01-01T10:30Z", (False, 1800.0)),
])
def test_crontab_starting_deadline(deadline, fields, last, now, expected):
    c = crontab(**fields, app=app_in(None, deadline), nowfun=fixed(at(now)))
    assert c.is_due(at(last)) == expected


# -- schedule (intervals) -------------------------------------------------------------------

NOW = at("2026-01-01T12:00:00Z")


@pytest.mark.parametrize(("run_every", "last", "expected"), [
    (10, NOW - dt.timedelta(seconds=11), (True, 10.0)),
    (10, NOW - dt.timedelta(seconds=10), (True, 10.0)),
    (10, NOW - dt.timedelta(seconds=3), (False, 7.0)),
    (dt.timedelta(minutes=5), NOW - dt.timedelta(minutes=1), (False, 240.0)),
    (dt.timedelta(minutes=5), NOW - dt.timedelta(hours=1), (True, 300.0)),
    (0.5, NOW - dt.timedelta(seconds=0.25), (False, 0.25)),
    (10, NOW.replace(tzinfo=None) - dt.timedelta(seconds=4), (False, 6.0)),
])
def test_schedule_is_due(run_every, last, expected):
    s = schedule(run_every, nowfun=fixed(NOW), app=app_in())
    result = s.is_due(last)
    assert isinstance(result, schedstate)
    assert result == expected


def test_schedule_counts_elapsed_time_across_dst():
    s = schedule(dt.timedelta(hours=24), app=app_in(PARIS))
    last = at("2026-03-28T12:00+01:00")
    assert next_run(s, last) == at("2026-03-29T13:00+02:00")  # 24 real hours later


@pytest.mark.parametrize(("zone", "run_every", "last", "now", "left"), [
    (None, dt.timedelta(hours=1), "2026-01-01T10:25:37Z", "2026-01-01T10:59:00Z", 60.0),
    (None, dt.timedelta(minutes=5), "2026-01-01T10:25:37Z", "2026-01-01T10:30:00Z", 0.0),
    (None, 30, "2026-01-01T10:25:37.5Z", "2026-01-01T10:26:00Z", 7.0),
    # daily: to midnight in the schedule's zone
    (PARIS, dt.timedelta(days=1), "2026-01-05T15:00Z", "2026-01-05T22:00Z", 3600.0),
])
def test_schedule_relative_rounds_down_to_the_interval(zone, run_every, last, now, left):
    s = schedule(run_every, relative=True, nowfun=fixed(at(now)), app=app_in(zone))
    assert s.remaining_estimate(at(last)).total_seconds() == left


def test_schedule_not_relative_keeps_the_exact_time():
    s = schedule(dt.timedelta(hours=1), nowfun=fixed(at("2026-01-01T10:59:00Z")),
                 app=app_in())
    assert s.remaining_estimate(at("2026-01-01T10:25:37Z")) == dt.timedelta(
        minutes=26, seconds=37)


@pytest.mark.parametrize(("run_every", "seconds", "human"), [
    (1, 1.0, "1.00 second"),
    (10, 10.0, "10.00 seconds"),
    (dt.timedelta(minutes=1), 60.0, "1.00 minute"),
    (dt.timedelta(hours=2), 7200.0, "2.00 hours"),
    (dt.timedelta(days=1), 86400.0, "1.00 day"),
    (90, 90.0, "1.50 minutes"),
    (0.5, 0.5, "now"),
    (dt.timedelta(seconds=-5), 0, "now"),
])
def test_schedule_seconds_and_repr(run_every, seconds, human):
    s = schedule(run_every)
    assert s.seconds == seconds
    assert s.human_seconds == human
    assert repr(s) == f"<freq: {human}>"


def test_schedule_equality_and_pickle():
    assert schedule(10) == schedule(dt.timedelta(seconds=10))
    assert schedule(10) == dt.timedelta(seconds=10)
    assert schedule(10) != schedule(11)
    s = schedule(dt.timedelta(minutes=3), relative=True, nowfun=tick)
    back = pickle.loads(pickle.dumps(s))
    assert back == s
    assert (back.run_every, back.relative, back.nowfun) == (dt.timedelta(minutes=3), True, tick)


@pytest.mark.parametrize("bad", ["10", None, True])
def test_schedule_needs_seconds_or_a_timedelta(bad):
    with pytest.raises(TypeError, match="seconds"):
        schedule(bad)


# -- maybe_schedule -------------------------------------------------------------------------

def test_maybe_schedule():
    app = app_in(PARIS)
    assert maybe_schedule(None) is None
    s = maybe_schedule(30, app=app)
    assert isinstance(s, schedule) and s.run_every == dt.timedelta(seconds=30) and s.app is app
    s = maybe_schedule(dt.timedelta(hours=1), relative=True, app=app)
    assert isinstance(s, schedule) and s.relative is True and s.seconds == 3600
    c = crontab(minute=0)
    assert maybe_schedule(c, app=app) is c and c.app is app
    assert maybe_schedule(c) is c and c.app is app  # no app given: keeps its own
    with pytest.raises(TypeError, match="not a schedule"):
        maybe_schedule("every day")


# -- BaseSchedule ---------------------------------------------------------------------------

def test_app_defaults_to_the_current_app(monkeypatch):
    app = app_in(NEW_YORK)
    monkeypatch.setattr(_state, "_default_app", app)
    s = crontab()
    assert s.app is app
    assert s.tz == zoneinfo.ZoneInfo(NEW_YORK)
    other = app_in(PARIS)
    s.app = other
    assert s.app is other and s.tz == zoneinfo.ZoneInfo(PARIS)


def test_time_zone_and_awareness():
    s = schedule(10, app=app_in(PARIS))
    assert s.tz == zoneinfo.ZoneInfo(PARIS)
    assert schedule(10, app=app_in()).tz == UTC
    assert s.utc_enabled is True
    naive = dt.datetime(2026, 7, 1, 12, 0)
    assert s.maybe_make_aware(naive).isoformat() == "2026-07-01T14:00:00+02:00"
    assert s.maybe_make_aware(naive, naive_as_utc=False).isoformat() == \
        "2026-07-01T12:00:00+02:00"
    aware = at("2026-07-01T12:00Z")
    assert s.maybe_make_aware(aware) is aware
    assert s.to_local(aware) is aware
    s.tz = zoneinfo.ZoneInfo(NEW_YORK)
    assert s.maybe_make_aware(naive).isoformat() == "2026-07-01T08:00:00-04:00"


def test_to_local_without_enable_utc_uses_the_machines_zone():
    app = Celery("test-schedules", set_as_current=False, enable_utc=False)
    s = schedule(10, app=app)
    aware = at("2026-07-01T12:00Z")
    local = s.to_local(aware)
    assert local == aware
    assert local.utcoffset() == aware.astimezone().utcoffset()


def test_now_comes_from_nowfun_else_the_app():
    assert schedule(1, nowfun=tick).now() == tick()
    before = dt.datetime.now(UTC)
    now = schedule(1, app=app_in()).now()
    assert now.tzinfo is not None and before <= now <= dt.datetime.now(UTC)


def test_base_schedule_is_abstract():
    base = BaseSchedule(nowfun=tick)
    with pytest.raises(NotImplementedError):
        base.is_due(NOW)
    with pytest.raises(NotImplementedError):
        base.remaining_estimate(NOW)
    assert base == BaseSchedule(nowfun=tick)
    assert base != BaseSchedule()


# -- solar ----------------------------------------------------------------------------------

LONDON = (51.5074, -0.1278)
NYC = (40.7128, -74.0060)
SYDNEY = (-33.8688, 151.2093)

#: Published almanac times (to the minute, converted to UTC).
PUBLISHED = [
    ("sunrise", LONDON, "2024-06-20T00:00Z", "2024-06-20T03:43Z"),  # 04:43 BST
    ("solar_noon", LONDON, "2024-06-20T00:00Z", "2024-06-20T12:02Z"),  # 13:02 BST
    ("sunset", LONDON, "2024-06-20T00:00Z", "2024-06-20T20:21Z"),  # 21:21 BST
    ("sunrise", NYC, "2024-06-20T04:00Z", "2024-06-20T09:25Z"),  # 05:25 EDT
    ("sunset", NYC, "2024-06-20T04:00Z", "2024-06-21T00:31Z"),  # 20:31 EDT
    ("sunrise", NYC, "2024-12-21T05:00Z", "2024-12-21T12:17Z"),  # 07:17 EST
    ("sunset", NYC, "2024-12-21T05:00Z", "2024-12-21T21:32Z"),  # 16:32 EST
    ("sunrise", SYDNEY, "2024-06-20T14:00Z", "2024-06-20T21:00Z"),  # 07:00 AEST
    ("sunset", SYDNEY, "2024-06-20T14:00Z", "2024-06-21T06:54Z"),  # 16:54 AEST
]

#: Times from PyEphem (what Celery computes with), for twilight and the equator.
EPHEM = [
    ("dawn_civil", LONDON, "2024-06-20T00:00Z", "2024-06-20T02:55:13Z"),
    ("dusk_nautical", LONDON, "2024-06-20T00:00Z", "2024-06-20T22:23:52Z"),
    ("dawn_civil", NYC, "2024-12-21T05:00Z", "2024-12-21T11:45:48Z"),
    ("dusk_astronomical", NYC, "2024-12-21T05:00Z", "2024-12-21T23:10:53Z"),
    ("dawn_astronomical", NYC, "2024-06-20T04:00Z", "2024-06-20T07:18:25Z"),
    ("dawn_nautical", SYDNEY, "2024-06-20T14:00Z", "2024-06-20T20:01:05Z"),
    ("dusk_nautical", SYDNEY, "2024-06-20T14:00Z", "2024-06-21T07:52:53Z"),
    ("dusk_civil", SYDNEY, "2024-06-20T14:00Z", "2024-06-21T07:21:39Z"),
    ("sunrise", (-0.1807, -78.4678), "2024-09-22T05:00Z", "2024-09-22T11:03:05Z"),
    ("sunset", (-0.1807, -78.4678), "2024-09-22T05:00Z", "2024-09-22T23:09:33Z"),
    ("solar_noon", (-0.1807, -78.4678), "2024-09-22T05:00Z", "2024-09-22T17:06:19Z"),
]


@pytest.mark.parametrize(("event", "place", "after", "expected"), PUBLISHED)
def test_solar_matches_published_times(event, place, after, expected):
    when = solar(event, *place).next_event(at(after))
    assert abs((when - at(expected)).total_seconds()) <= 120


@pytest.mark.parametrize(("event", "place", "after", "expected"), EPHEM)
def test_solar_matches_pyephem(event, place, after, expected):
    when = solar(event, *place).next_event(at(after))
    assert abs((when - at(expected)).total_seconds()) <= 60


@pytest.mark.parametrize(("event", "place", "after", "expected", "slack"), [
    # No astronomical dusk in London around midsummer: the next is on 20 July.
    ("dusk_astronomical", LONDON, "2024-06-20T12:00Z", "2024-07-20T23:51:20Z", 120),
    # Tromsø: polar night until mid-January, midnight sun until late July.
    ("sunrise", (69.6492, 18.9553), "2026-12-01T00:00Z", "2027-01-15T10:34:32Z", 300),
    ("sunset", (69.6492, 18.9553), "2026-06-01T00:00Z", "2026-07-25T22:36:15Z", 300),
    # Longyearbyen: the sun is back in mid-February; civil dusk returns in September.
    ("sunrise", (78.22, 15.65), "2026-11-01T00:00Z", "2027-02-16T10:20:49Z", 300),
    ("dusk_civil", (78.22, 15.65), "2026-05-01T00:00Z", "2026-09-07T22:51:54Z", 300),
    # The North Pole: the sun's upper edge reaches -34' once a year, about two days before
    # the March equinox (2026-03-20 14:46 UTC), when its declination is near -0.83 degrees.
    ("sunrise", (90, 0), "2026-01-01T00:00Z", "2026-03-18T12:00Z", 86400),
    ("sunset", (-90, 0), "2026-01-01T00:00Z", "2026-03-22T17:00Z", 86400),
])
def test_solar_skips_days_without_the_event(event, place, after, expected, slack):
    when = solar(event, *place).next_event(at(after))
    assert abs((when - at(expected)).total_seconds()) <= slack


def test_solar_is_due():
    s = solar("sunrise", *LONDON, app=app_in())
    last = at("2024-06-19T04:00Z")  # after the 19th's sunrise
    s.nowfun = fixed(at("2024-06-20T03:40Z"))
    due, wait = s.is_due(last)
    assert due is False and 120 <= wait <= 300  # sunrise at about 03:43
    s.nowfun = fixed(at("2024-06-20T03:45Z"))
    due, wait = s.is_due(last)
    assert due is True and abs(wait - (86400 - 120)) <= 120  # the 21st's, a day later


def test_solar_does_not_run_twice_for_one_event():
    s = solar("sunset", *NYC, app=app_in())
    event = s.next_event(at("2024-06-20T04:00Z"))
    s.nowfun = fixed(event)
    assert s.is_due(at("2024-06-20T04:00Z")).is_due is True
    assert s.is_due(event).is_due is False  # last run at the event itself


@pytest.mark.parametrize("event", sorted(solar._all_events))
def test_solar_computes_one_event_as_one_instant(event):
    # Whatever the search starts from, an event is the same instant, so a last run at it
    # never looks earlier than a recomputed copy of it.
    s = solar(event, *SYDNEY)
    when = s.next_event(at("2025-03-01T00:00Z"))
    for hours in (1, 7, 13, 23):
        assert s.next_event(when - dt.timedelta(hours=hours)) == when
    assert s.next_event(when) - when > dt.timedelta(hours=20)


def test_solar_reads_naive_datetimes_as_utc():
    s = solar("sunrise", *LONDON)
    assert s.next_event(dt.datetime(2024, 6, 20)) == s.next_event(at("2024-06-20T00:00Z"))


def test_solar_without_an_event_in_reach_asks_again_in_a_day(monkeypatch):
    s = solar("sunrise", *LONDON, app=app_in(), nowfun=fixed(NOW))
    monkeypatch.setattr(s, "next_event", lambda after: None)
    assert s.remaining_estimate(NOW) == dt.timedelta(days=1)
    assert s.is_due(NOW) == (False, 86400.0)


@pytest.mark.parametrize(("args", "error", "why"), [
    (("moonrise", 0, 0), ValueError, "Argument event 'moonrise' is invalid, must be one of "
                                     "dawn_astronomical, dawn_civil, dawn_nautical"),
    (("sunrise", 90.5, 0), ValueError, "Argument latitude 90.5 is invalid"),
    (("sunrise", -91, 0), ValueError, "Argument latitude -91 is invalid"),
    (("sunrise", float("nan"), 0), ValueError, "Argument latitude nan is invalid"),
    (("sunrise", 0, 180.5), ValueError, "Argument longitude 180.5 is invalid"),
    (("sunrise", 0, -181), ValueError, "must be between -180 and 180"),
    (("sunrise", "51.5", 0), TypeError, "latitude must be a number"),
])
def test_solar_validates(args, error, why):
    with pytest.raises(error) as info:
        solar(*args)
    assert why in str(info.value)


def test_solar_accepts_the_limits_and_every_event():
    assert solar._all_events == {
        "dawn_astronomical", "dawn_nautical", "dawn_civil", "sunrise", "solar_noon",
        "sunset", "dusk_civil", "dusk_nautical", "dusk_astronomical"}
    for event in solar._all_events:
        assert solar(event, 90, -180).event == event
    assert solar("sunset", -90, 180).lat == -90


def test_solar_equality_repr_and_pickle():
    s = solar("sunset", 51.5, -0.1, nowfun=tick)
    assert repr(s) == "<solar: sunset at latitude 51.5, longitude: -0.1>"
    assert s == solar("sunset", 51.5, -0.1)
    assert s != solar("sunrise", 51.5, -0.1)
    assert s != solar("sunset", 51.5, 0.1)
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back.nowfun is tick


# -- celery.utils.time ----------------------------------------------------------------------

def test_day_and_month_names():
    names = ("sun", "Monday", "TUE", "Wednesday", "thurs", "fri", "sat")
    assert [weekday(n) for n in names] == [0, 1, 2, 3, 4, 5, 6]
    assert [yearmonth(n) for n in ("jan", "February", "sept", "DEC")] == [1, 2, 9, 12]
    for bad in ("xyz", "mo", "monkey", "1"):
        with pytest.raises(KeyError):
            weekday(bad)


@pytest.mark.parametrize(("secs", "kwargs", "expected"), [
    (0, {}, "now"),
    (1, {}, "1.00 second"),
    (7200, {}, "2.00 hours"),
    (60, {"prefix": "in "}, "in 1.00 minute"),
    (0, {"prefix": "in "}, "now"),
    (0.5, {"microseconds": True}, "0.50 seconds"),
    (129600, {}, "1.50 days"),
])
def test_humanize_seconds(secs, kwargs, expected):
    assert humanize_seconds(secs, **kwargs) == expected
