"""``app.connection()``: a stand-in for kombu's ``Connection`` that only names the broker.

Our transports open and pool their own connections (one pool per event loop), so this object
opens nothing. It exists so that code written for Celery reaches what it needs, e.g. Flower's
``with app.connection() as conn: EventReceiver(conn, handlers=..., app=app)`` (the receiver
ignores ``conn`` and uses ``app.transport``). It has no channels, no ``drain_events``, no
``ensure_connection``: code that needs those needs kombu. What it does carry for such code:
``transport.driver_type`` (``"redis"``, ``"amqp"``, ...: Flower picks its broker page by it)
and ``connection_errors``/``recoverable_connection_errors``, the errors our transports raise
when the broker is unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..exceptions import ConnectionLost
from ..utils.text import mask_url

__all__ = ["BrokerConnection", "TransportInfo"]

# URL scheme -> kombu's driver_type for the same broker.
_DRIVER_TYPES = {"rediss": "redis", "valkey": "redis", "valkeys": "redis", "amqps": "amqp",
                 "pyamqp": "amqp"}


@dataclass(frozen=True)
class TransportInfo:
    """What kombu's ``Connection.transport`` tells about the broker, without a client."""

    #: The kind of server: ``"redis"``, ``"amqp"``, ``"sqlite"``, ``"filesystem"``, ...
    driver_type: str
    #: The URL scheme as given.
    driver_name: str


class BrokerConnection:
    """The broker URL, as a context manager. Immutable; safe from any thread."""

    #: The errors our transports raise for an unreachable or lost broker.
    connection_errors: tuple[type[BaseException], ...] = (ConnectionLost,)
    recoverable_connection_errors = connection_errors

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def transport(self) -> TransportInfo:
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else self.url
        return TransportInfo(_DRIVER_TYPES.get(scheme, scheme), scheme)

    def as_uri(self, include_password: bool = False) -> str:
        """The broker URL, its password masked unless ``include_password``."""
        return self.url if include_password else mask_url(self.url)

    def close(self) -> None:
        """Nothing to close (the app's transport owns the connections)."""

    release = close

    def __enter__(self) -> BrokerConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BrokerConnection: {self.as_uri()}>"
