"""Monitoring events: receive what workers and clients publish (``EventReceiver``), keep a
picture of the cluster (``events.state.State``), print them (``events.dumper``).

Our worker sends no events yet; upstream Celery workers (``-E``) and clients
(``task_send_sent_event``) do, and these read them.
"""

from __future__ import annotations

from .event import EVENT_EXCHANGE_NAME, Event, group_from
from .receiver import EventReceiver

__all__ = ["EVENT_EXCHANGE_NAME", "Event", "EventReceiver", "group_from"]
