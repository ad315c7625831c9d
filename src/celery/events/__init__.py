"""Monitoring events: send them (``EventDispatcher``; a worker's in worker/events.py),
receive what workers and clients publish (``EventReceiver``), keep a picture of the cluster
(``events.state.State``), print them (``events.dumper``)."""

from __future__ import annotations

from .dispatcher import EventDispatcher
from .event import EVENT_EXCHANGE_NAME, Event, group_from
from .receiver import EventReceiver

__all__ = ["EVENT_EXCHANGE_NAME", "Event", "EventDispatcher", "EventReceiver", "group_from"]
