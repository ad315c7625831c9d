"""``Elector``: one beat's side of the leader lease (transport/lease.py), driven from beat's
thread. Only the holder of the lease sends; the others stand by and ask again every
``ttl / 6`` seconds, so a holder that dies is replaced within about ``ttl * 7/6`` seconds
(``beat_lease_seconds``, default 6). The holder renews every ``ttl / 3`` seconds.

The lease's coroutines run on the app's portal loop (``app.portal.call``); the Elector
itself is used by beat's thread only.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..transport.base import CAP_LEASE
from ..transport.lease import Claim, LeaderLease

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["Elector", "lease_for"]

logger = logging.getLogger("celery.beat")


def lease_for(app: Celery) -> LeaderLease | None:
    """The app's broker's leader lease, named ``beat_lease_name`` (default: the app's main
    module name); None, with a warning, for a broker that has none."""
    transport = app.transport
    if CAP_LEASE not in getattr(transport, "capabilities", ()):
        logger.warning("beat: the broker %s has no leader lease: run exactly one beat, or "
                       "each one will send every entry", type(transport).__name__)
        return None
    name = app.conf.beat_lease_name or app.main or "celery"
    return transport.leader_lease(str(name))  # type: ignore[attr-defined, no-any-return]


class Elector:
    """Takes, renews and gives up this beat's leader lease; says whether it may send."""

    def __init__(self, app: Celery, lease: LeaderLease | None, ttl: float | None = None,
                 holder: str | None = None) -> None:
        self.app = app
        self.lease = lease
        self.ttl = float(ttl or app.conf.beat_lease_seconds)
        if self.ttl < 1.0:
            raise ValueError(f"beat_lease_seconds must be at least 1, got {self.ttl}")
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = lease is None
        self._next_step = 0.0  # time.monotonic() when step() has work to do
        self._expires = 0.0  # local bound of our term: never send past it without renewing

    def _call(self, coro: Any) -> Any:
        return self.app.portal.call(coro, timeout=self.ttl)

    def step(self) -> bool:
        """Renew (as holder) or ask for (standing by) the lease when it is time; whether
        this beat holds it now."""
        if self.lease is None:
            return True
        now = time.monotonic()
        if now < self._next_step and (not self.leading or now < self._expires):
            return self.leading
        if self.leading:
            if self._call(self.lease.renew(self.ttl)):
                self._held_from(now)
                return True
            self.leading = False
            logger.warning("beat: lost the leader lease (%s holds it now); standing by",
                           self._call(self.lease.holder()) or "nobody")
        if self._call(self.lease.acquire(self.holder, self.ttl)):
            self._held_from(now)
            self.leading = True
            logger.info("beat: this beat (%s) is the sender now (fencing token %d)",
                        self.holder, self.lease.token)
        else:
            self._next_step = now + self.ttl / 6
        return self.leading

    def _held_from(self, started: float) -> None:
        self._next_step = started + self.ttl / 3
        self._expires = started + self.ttl

    def step_in(self) -> float:
        """Seconds until ``step`` has work to do."""
        return max(self._next_step - time.monotonic(), 0.0) if self.lease is not None else 3600.0

    def claim(self, entry: str, run_at: float) -> tuple[Claim, float | None]:
        """Record a run of ``entry`` before sending it (lease.py); LOST ends our term."""
        if self.lease is None:
            return Claim.CLAIMED, run_at
        if time.monotonic() >= self._expires:
            self.leading = False
            return Claim.LOST, None
        outcome, recorded = self._call(self.lease.claim(entry, run_at))
        if outcome is Claim.LOST:
            self.leading = False
            self._next_step = 0.0
        return outcome, recorded

    def runs(self) -> dict[str, float]:
        return {} if self.lease is None else self._call(self.lease.runs())

    def lost(self) -> None:
        """A claim said our term is over: stand by."""
        if self.lease is not None and self.leading:
            self.leading = False
        self._next_step = 0.0

    def release(self) -> None:
        """Give the lease up (clean shutdown), so another beat takes over at once."""
        if self.lease is not None and self.leading:
            self.leading = False
            try:
                self._call(self.lease.release())
            except Exception as exc:  # the broker is gone: the lease expires by itself
                logger.warning("beat: could not release the leader lease: %s", exc)
