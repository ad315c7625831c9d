"""``Worker``: what the events of one worker node say about it (part of ``events.state``)."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["HEARTBEAT_DRIFT_MAX", "HEARTBEAT_EXPIRE_WINDOW", "Worker", "heartbeat_expires"]

logger = logging.getLogger("celery.events.state")

#: A worker is alive until this percentage of its heartbeat interval (``freq``) has passed
#: since its last heartbeat was received: twice the interval, as in Celery.
HEARTBEAT_EXPIRE_WINDOW = 200
#: Seconds between a heartbeat's timestamp and its arrival above which clocks are out of step.
HEARTBEAT_DRIFT_MAX = 16
#: Keys of an event never copied onto a Worker (they are its own bookkeeping).
_OWN = frozenset({"heartbeats", "event"})


def heartbeat_expires(timestamp: float, freq: float = 60,
                      expire_window: float = HEARTBEAT_EXPIRE_WINDOW) -> float:
    """When a worker whose last heartbeat arrived at ``timestamp`` counts as gone."""
    return float(timestamp) + float(freq) * (expire_window / 100)


class Worker:
    """A worker node as its events describe it.

    Thread-safety: changed only through ``State`` (under its lock). Readers on other
    threads see whole values: ``heartbeats`` is replaced, never changed in place.
    """

    #: The attributes Flower and Celery's ``State`` list for a worker.
    _fields = ("hostname", "pid", "freq", "heartbeats", "clock", "active", "processed",
               "loadavg", "sw_ident", "sw_ver", "sw_sys")
    #: How many heartbeat arrival times are kept.
    heartbeat_max = 4
    expire_window = HEARTBEAT_EXPIRE_WINDOW

    def __init__(self, hostname: str | None = None, pid: int | None = None, freq: float = 60,
                 heartbeats: list[float] | None = None, clock: int = 0,
                 active: int | None = None, processed: int | None = None,
                 loadavg: list[float] | None = None, sw_ident: str | None = None,
                 sw_ver: str | None = None, sw_sys: str | None = None, *,
                 now: Callable[[], float] = time.time) -> None:
        self.hostname = hostname
        self.pid = pid
        self.freq = freq
        self.heartbeats: list[float] = list(heartbeats or ())
        self.clock = clock
        self.active = active
        self.processed = processed
        self.loadavg = loadavg
        self.sw_ident = sw_ident
        self.sw_ver = sw_ver
        self.sw_sys = sw_sys
        #: The wall clock ``alive`` compares with (a fake one in tests).
        self._now = now
        self._drift_warned = False

    def event(self, type_: str | None, timestamp: float | None = None,
              local_received: float | None = None,
              fields: Mapping[str, Any] | None = None) -> None:
        """Apply one event: ``type_`` is the subject (``online``, ``heartbeat``, ``offline``;
        ``None`` for a task event, which counts as a sign of life). ``fields`` are copied
        onto the worker; ``offline`` forgets the heartbeats, others record ``local_received``."""
        for key, value in (fields or {}).items():
            if key not in _OWN:
                setattr(self, key, value)
        if type_ == "offline":
            self.heartbeats = []
            return
        if not _is_number(local_received) or not _is_number(timestamp):
            return
        assert local_received is not None and timestamp is not None  # (for mypy)
        drift = abs(int(local_received) - int(timestamp))
        if drift > HEARTBEAT_DRIFT_MAX and not self._drift_warned:
            self._drift_warned = True
            logger.warning("Worker %s's clock is %s s away from ours: check NTP on both "
                           "hosts (its liveness is judged by arrival times)", self.hostname, drift)
        beats = self.heartbeats
        if not beats or local_received > beats[-1]:
            beats = [*beats, local_received]
        else:
            beats = list(beats)
            bisect.insort(beats, local_received)
        self.heartbeats = beats[-self.heartbeat_max:]

    def update(self, f: Mapping[str, Any], **kw: Any) -> None:
        """Set attributes from a mapping and keywords."""
        for key, value in (dict(f, **kw) if kw else f).items():
            setattr(self, key, value)

    @property
    def heartbeat_expires(self) -> float:
        """When this worker counts as gone, given its last heartbeat (it must have one)."""
        return heartbeat_expires(self.heartbeats[-1], self.freq, self.expire_window)

    @property
    def alive(self) -> bool:
        """Whether a heartbeat arrived within the last ``freq * 2`` seconds."""
        beats = self.heartbeats
        return bool(beats) and self._now() < heartbeat_expires(beats[-1], self.freq,
                                                               self.expire_window)

    @property
    def status_string(self) -> str:
        return "ONLINE" if self.alive else "OFFLINE"

    @property
    def id(self) -> tuple[str | None, int | None]:
        return self.hostname, self.pid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Worker) and other.hostname == self.hostname

    def __hash__(self) -> int:
        return hash(self.hostname)

    def __repr__(self) -> str:
        return f"<Worker: {self.hostname} ({self.status_string} clock:{self.clock})>"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
