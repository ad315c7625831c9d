"""URL scheme -> transport class, imported lazily."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .base import Transport

__all__ = ["TRANSPORTS", "transport_for_url"]

#: scheme -> "module:Class" (relative to this package).
TRANSPORTS: dict[str, str] = {
    "redis": ".redis:RedisTransport",
    "rediss": ".redis:RedisTransport",
    "valkey": ".redis:RedisTransport",
    "valkeys": ".redis:RedisTransport",
    "amqp": ".amqp:AMQPTransport",
    "amqps": ".amqp:AMQPTransport",
    "pyamqp": ".amqp:AMQPTransport",
    "sqlite": ".sqlite:SQLiteTransport",
    "memory": ".memory:MemoryTransport",
    "filesystem": ".filesystem:FilesystemTransport",
}


def load_class(spec: str, package: str) -> Any:
    """Import ``"module:Class"`` (module relative to ``package`` when it starts with a dot)."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name, package)
    return getattr(module, attr)


def scheme_of(url: str, kind: str, known: dict[str, str]) -> str:
    """The scheme of ``url``; raises ImproperlyConfigured naming the known schemes."""
    if not isinstance(url, str) or "://" not in url:
        raise ImproperlyConfigured(
            f"Invalid {kind} URL {url!r}: expected scheme://..., "
            f"with one of the schemes: {', '.join(sorted(known))}"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in known:
        raise ImproperlyConfigured(
            f"Unknown {kind} URL scheme {scheme!r} in {url!r}; "
            f"known schemes: {', '.join(sorted(known))}"
        )
    return scheme


def transport_for_url(url: str, **options: Any) -> Transport:
    """A transport instance for a broker URL such as ``redis://localhost:6379/0``."""
    scheme = scheme_of(url, "broker", TRANSPORTS)
    cls = load_class(TRANSPORTS[scheme], __package__)
    return cls(url, **options)
