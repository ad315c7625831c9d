"""``app.events``: the event receiver and state bound to an app (Celery's ``app.events``).

Only the receiving side exists: our worker sends no events yet, and there is no
``Dispatcher`` here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..events.receiver import EventReceiver
from ..events.state import State as _State

if TYPE_CHECKING:
    from .base import Celery

__all__ = ["Events"]


class Events:
    """``app.events.Receiver(...)`` and ``app.events.State(...)``. Thread-safety: holds
    only the app; every method may be called from any thread."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def Receiver(self, channel: Any = None, handlers: Any = None,  # noqa: N802 - Celery's name
                 routing_key: str = "#", node_id: str | None = None,
                 **kwargs: Any) -> EventReceiver:
        """An ``EventReceiver`` of this app. ``channel`` may be ``None``, one of our
        transports, or a connection object (``app.connection_for_read()``, a kombu
        ``Connection``), which is ignored: the app's broker is used."""
        return EventReceiver(channel, handlers=handlers, routing_key=routing_key,
                             node_id=node_id, app=self.app, **kwargs)

    def State(self, *args: Any, **kwargs: Any) -> _State:  # noqa: N802 - Celery's name
        """A new ``celery.events.state.State`` (the app is not involved)."""
        return _State(*args, **kwargs)
