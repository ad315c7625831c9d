"""Per-task rate limits (``rate_limit="10/s"``), per worker, as Celery applies them.

A task with a rate limit gets a token bucket; its requests wait in a queue of their own until
the bucket allows the next one, so they never hold up other tasks. Everything here runs on
the consumer's event loop (no locks).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .request import Request

__all__ = ["RateLimiter", "parse_rate"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: str | float | int | None) -> float | None:
    """Tasks per second for Celery's rate strings: ``"10/s"``, ``"100/m"``, ``"1000/h"``, or a
    number (per second). None or 0 means no limit.

    Raises:
        ImproperlyConfigured: not a rate.
    """
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    text = str(value).strip()
    count, _, unit = text.partition("/")
    try:
        number = float(count)
        per = _UNITS[unit.strip() or "s"]
    except (ValueError, KeyError):
        raise ImproperlyConfigured(
            f"Invalid rate limit {value!r}: expected a number per s, m or h, e.g. '10/s', '100/m'"
        ) from None
    return number / per if number > 0 else None


class RateLimiter:
    """The requests of one rate-limited task, released one token at a time.

    A bucket of capacity 1 refilled at ``rate`` tokens per second: requests are spaced
    ``1 / rate`` seconds apart, as Celery's per-task token buckets space them.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.waiting: deque[Request] = deque()
        self._next = 0.0  # monotonic time at which the next token is there

    def release(self, now: float | None = None) -> list[Request]:
        """The requests whose turn has come (at most one per token)."""
        now = time.monotonic() if now is None else now
        out: list[Request] = []
        while self.waiting and self._next <= now:
            out.append(self.waiting.popleft())
            self._next = max(self._next, now) + 1.0 / self.rate
        return out

    def next_release(self) -> float | None:
        """Monotonic time of the next release, or None when nothing waits."""
        return self._next if self.waiting else None
