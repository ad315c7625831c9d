"""The Redis transport's URL and key layout: what a ``redis://`` URL connects to, and which
list keys a queue's priority steps use (kombu's layout, described in redis.py)."""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from ..exceptions import ImproperlyConfigured

__all__ = ["Layout", "parse_url", "priority_steps"]

_SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}


class Layout(NamedTuple):
    """The keys one ``fetch`` reads, cached per tuple of queue names."""

    script_keys: tuple[str, ...]  # unacked, index, dead-letter, registry, then queue keys
    queue_keys: tuple[str, ...]  # priority-major, in reading order
    names: tuple[str, ...]  # logical queue name of each queue key
    by_key: dict[bytes, int]  # BRPOP's answer -> 1-based key number


def parse_url(url: str) -> tuple[dict[str, Any], bool, str]:
    """Connection kwargs, TLS flag and a password-free URL for messages.

    Raises:
        ImproperlyConfigured: the URL is not a valid redis/valkey URL.
    """
    try:
        parts = urlsplit(url)
        scheme, port = parts.scheme.lower(), parts.port or 6379
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"Invalid Redis URL {url!r}: {exc}") from None
    if scheme not in _SCHEMES:
        raise ImproperlyConfigured(
            f"Invalid Redis URL {url!r}: scheme must be one of {', '.join(sorted(_SCHEMES))}"
        )
    query = parse_qs(parts.query)
    db_text = parts.path.strip("/") or query.get("db", ["0"])[0]
    if not db_text.isdigit():
        raise ImproperlyConfigured(
            f"Invalid Redis URL {url!r}: database {db_text!r} is not a number"
        )
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port,
        "db": int(db_text),
    }
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    kwargs.update((k, v[0]) for k, v in query.items() if k.startswith("ssl_"))
    auth = f"{parts.username or ''}:***@" if parts.password else ""
    safe = f"{scheme}://{auth}{kwargs['host']}:{port}/{kwargs['db']}"
    return kwargs, _SCHEMES[scheme], safe


def priority_steps(value: Any) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in value)
    except (TypeError, ValueError):
        steps = ()
    if not steps or steps[0] != 0 or list(steps) != sorted(set(steps)):
        raise ImproperlyConfigured(
            f"priority_steps must be increasing integers starting at 0, got {value!r}"
        )
    return steps
