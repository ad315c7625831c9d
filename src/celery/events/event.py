"""Event dicts as Celery makes them, and the names events travel under."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "EVENT_EXCHANGE_NAME", "Event", "adjust_timestamp", "group_from", "routing_key_of",
    "utcoffset",
]

#: The exchange events are published to (the ``event_exchange`` setting's default).
EVENT_EXCHANGE_NAME = "celeryev"


def Event(type: str, _fields: Mapping[str, Any] | None = None,  # noqa: N802, A002 - Celery's
          __dict__: Callable[..., dict[str, Any]] = dict,
          __now__: Callable[[], float] = time.time, **fields: Any) -> dict[str, Any]:
    """An event: ``_fields`` and ``fields`` merged, plus ``type`` and a ``timestamp`` (now,
    unless one is given). ``__dict__`` is the mapping type to build, ``__now__`` the clock."""
    event = __dict__(_fields, **fields) if _fields else __dict__(**fields)
    if "timestamp" not in event:
        event["timestamp"] = __now__()
    event["type"] = type
    return event


def group_from(type: str) -> str:  # noqa: A002 - Celery's name
    """The group of an event type: what comes before its first ``-`` (``task-sent``: task)."""
    return type.split("-", 1)[0]


def routing_key_of(type: str) -> str:  # noqa: A002
    """The routing key an event of ``type`` is published with (``task-sent``: task.sent)."""
    return type.replace("-", ".")


def utcoffset() -> float:
    """This host's offset from UTC in hours, west positive, as Celery stamps its events
    (``utcoffset`` field: UTC+2 gives -2)."""
    dst = time.daylight and time.localtime().tm_isdst > 0
    return (time.altzone if dst else time.timezone) / 3600


def adjust_timestamp(timestamp: float, offset: float, here: Callable[[], float] = utcoffset) -> float:
    """``timestamp`` stamped on a host ``offset`` hours west of UTC, moved to this host's
    offset (Celery's receivers do this with ``localize``; equal offsets change nothing)."""
    return timestamp - (offset - here()) * 3600
