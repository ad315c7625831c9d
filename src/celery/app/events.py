"""``app.events``: the event dispatcher, receiver and state bound to an app (Celery's
``app.events``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..events.dispatcher import EventDispatcher
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

    def Dispatcher(self, connection: Any = None, hostname: str | None = None,  # noqa: N802
                   enabled: bool = True, channel: Any = None,
                   buffer_while_offline: bool | None = None,
                   **kwargs: Any) -> EventDispatcher:
        """An ``EventDispatcher`` of this app; ``send`` publishes at once (through the
        app's portal loop). ``connection``/``channel`` are ignored: the app's broker is used."""
        return EventDispatcher(connection, hostname=hostname, enabled=enabled,
                               buffer_while_offline=buffer_while_offline, app=self.app,
                               **kwargs)

    @contextlib.contextmanager
    def default_dispatcher(self, hostname: str | None = None, enabled: bool = True,
                           buffer_while_offline: bool = False) -> Iterator[EventDispatcher]:
        """``with app.events.default_dispatcher() as d: d.send(...)``, as in Celery."""
        with self.Dispatcher(hostname=hostname, enabled=enabled,
                             buffer_while_offline=buffer_while_offline) as dispatcher:
            yield dispatcher

    def State(self, *args: Any, **kwargs: Any) -> _State:  # noqa: N802 - Celery's name
        """A new ``celery.events.state.State`` (the app is not involved)."""
        return _State(*args, **kwargs)
