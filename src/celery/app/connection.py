"""``app.connection()``: a stand-in for kombu's ``Connection`` that only names the broker.

Our transports open and pool their own connections (one pool per event loop), so this object
opens nothing. It exists so that code written for Celery reaches what it needs, e.g. Flower's
``with app.connection() as conn: EventReceiver(conn, handlers=..., app=app)`` (the receiver
ignores ``conn`` and uses ``app.transport``). It has no channels, no ``drain_events``, no
``ensure_connection``: code that needs those needs kombu.
"""

from __future__ import annotations

from typing import Any

from ..utils.text import mask_url

__all__ = ["BrokerConnection"]


class BrokerConnection:
    """The broker URL, as a context manager. Immutable; safe from any thread."""

    def __init__(self, url: str) -> None:
        self.url = url

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
