"""Schedules: when periodic tasks run (an interval, a crontab, a solar event).

Celery's ``celery.schedules`` API. A schedule answers ``is_due(last_run_at)`` with a
:data:`schedstate` ``(is_due, next)``: whether the task should run now, and in how many
seconds to ask again. Naive datetimes (``last_run_at``, or what ``nowfun`` returns) are read
as UTC, as in Celery.

Time zones. An interval (:class:`schedule`, in ``base``) counts elapsed time; a
:class:`crontab` (``cron``) matches wall-clock times in the schedule's zone, with the DST
rules written in its module; a :class:`solar` schedule (``solar``) runs at instants.
"""

from __future__ import annotations

from .base import BaseSchedule, maybe_schedule, schedstate, schedule
from .cron import Cronspec, ParseException, crontab, crontab_parser
from .cron import cronfield as cronfield  # Celery's name, outside its __all__
from .solar import solar

__all__ = [
    "BaseSchedule",
    "Cronspec",
    "ParseException",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]

# Celery defines these in ``celery.schedules``: pickles (beat's schedule shelve) and reprs
# name them there, so they say so whichever submodule holds them now.
for _cls in (BaseSchedule, ParseException, crontab, crontab_parser, schedstate, schedule,
             solar):
    _cls.__module__ = __name__
del _cls
