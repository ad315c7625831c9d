"""Beat: sends periodic tasks (``celery beat``, ``celery worker -B``), one sender among many.

    app.conf.beat_schedule = {
        "add-every-30s": {"task": "proj.add", "schedule": 30.0, "args": (16, 16)},
        "monday-7:30": {"task": "proj.report", "schedule": crontab(hour=7, minute=30,
                                                                   day_of_week=1)},
    }

Parts: ``entry.py`` (ScheduleEntry), ``scheduler.py`` (Scheduler: the schedule and its
tick), ``persistent.py`` (PersistentScheduler: run state in a SQLite file), ``leader.py``
(the leader lease), ``service.py`` (the loop). docs/periodic-tasks.md tells the rules.
"""

from ..exceptions import SchedulingError
from .entry import BeatLazyFunc, ScheduleEntry
from .persistent import PersistentScheduler
from .scheduler import DEFAULT_MAX_INTERVAL, Scheduler
from .service import EmbeddedService, Service

__all__ = [
    "DEFAULT_MAX_INTERVAL",
    "BeatLazyFunc",
    "EmbeddedService",
    "PersistentScheduler",
    "ScheduleEntry",
    "Scheduler",
    "SchedulingError",
    "Service",
]
