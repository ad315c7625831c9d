"""Per-task rate limits (``rate_limit="10/s"``), per worker, as Celery applies them.

A task with a rate limit gets a token bucket; its requests wait in a queue of their own until
the bucket allows the next one, so they never hold up other tasks. Everything here runs on
the consumer's event loop (no locks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .request import Request

__all__ = ["RateLimiter", "RateLimits", "parse_rate"]

logger = logging.getLogger("celery.worker.consumer")

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


class RateLimits:
    """The limiter of each task by name (None: no limit) and the one timer that releases
    the next waiting request; ``release(req)`` takes a request whose turn has come, and
    ``due()`` runs when the timer fires (after the release)."""

    def __init__(self, default: Any, release: Callable[[Request], None],
                 due: Callable[[], None]) -> None:
        self.by_name: dict[str, RateLimiter | None] = {}
        self._default = default  # task_default_rate_limit
        self._release = release
        self._due = due
        self._timer: asyncio.TimerHandle | None = None

    def limiter_for(self, req: Request) -> RateLimiter | None:
        name = req.name
        if name not in self.by_name:
            try:
                rate = parse_rate(req.task.rate_limit or self._default)
            except ImproperlyConfigured as exc:
                logger.error("Task %s: %s; running it without a rate limit", name, exc)
                rate = None
            self.by_name[name] = RateLimiter(rate) if rate else None
        return self.by_name[name]

    def pump(self, arm: bool = True) -> None:
        """Release the requests whose turn has come; with ``arm``, set the timer for the next."""
        self.cancel()
        now = time.monotonic()
        soonest = None
        for limiter in self.by_name.values():
            if limiter is None:
                continue
            for req in limiter.release(now):
                self._release(req)
            at = limiter.next_release()
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        if soonest is not None and arm:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, soonest - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._due()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def waiting(self) -> list[Request]:
        return [r for lim in self.by_name.values() if lim is not None for r in lim.waiting]
