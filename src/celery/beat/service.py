"""``Service``: runs a scheduler until stopped (``celery beat``), and ``EmbeddedService``:
the same in a thread of a worker (``celery worker -B``).

Each turn: keep or ask for the leader lease (beat/leader.py); if this beat holds it,
``scheduler.tick()`` sends what is due; then sleep until the next entry is due or the lease
needs attention, whichever is first. ``stop`` (any thread, or a signal handler) sets a flag
and writes a byte to a pipe the sleep selects on, so beat stops at once, syncs its schedule
and gives the lease up. It takes no lock: a ``threading.Event.set`` in a signal handler
deadlocks when the signal lands while the main thread holds the event's lock inside
``Event.wait``, which is where beat spends its time.
A broker that cannot be reached is logged and retried with backoff; beat keeps running.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .. import signals
from ..exceptions import CeleryError
from .leader import Elector, lease_for
from .scheduler import LostLease, Scheduler

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["EmbeddedService", "Service"]

logger = logging.getLogger("celery.beat")

#: Seconds between attempts while the broker cannot be reached (doubling up to the last).
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)


class Service:
    """Beat: one scheduler, ticked while this beat holds the leader lease."""

    scheduler_cls: Any = "celery.beat:PersistentScheduler"

    def __init__(self, app: Celery, max_interval: float | None = None,
                 schedule_filename: str | None = None, scheduler_cls: Any = None) -> None:
        self.app = app
        self.max_interval = max_interval or app.conf.beat_max_loop_interval or None
        self.schedule_filename = schedule_filename or app.conf.beat_schedule_filename
        self.scheduler_cls = scheduler_cls or app.conf.beat_scheduler or self.scheduler_cls
        # stop() may run in a signal handler: it sets this plain flag (one store, seen by
        # the loop at its next check) and wakes the sleep through the pipe, taking no lock.
        # The pipe lives as long as this object, so a late stop() never writes to a
        # descriptor number that was closed and reused.
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        self._is_stopped = threading.Event()
        self._scheduler: Scheduler | None = None
        self.elector: Elector | None = None
        self._failures = 0

    def get_scheduler(self, lazy: bool = False) -> Scheduler:
        cls = self.scheduler_cls
        if isinstance(cls, str):
            from ..app.config import import_object

            cls = import_object(cls)
        return cls(app=self.app, schedule_filename=self.schedule_filename,  # type: ignore[no-any-return]
                   max_interval=self.max_interval, lazy=lazy)

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = self.get_scheduler()
        return self._scheduler

    def start(self, embedded_process: bool = False) -> None:
        """Run until ``stop``; Celery's signals ``beat_init`` (and ``beat_embedded_init``
        inside a worker) are sent first."""
        logger.info("beat: Starting...")
        try:
            scheduler = self.scheduler
            self.elector = scheduler.elector = Elector(self.app, lease_for(self.app))
            logger.debug("beat: Ticking with max interval->%.0fs", scheduler.max_interval)
            signals.beat_init.send(sender=self)
            if embedded_process:
                signals.beat_embedded_init.send(sender=self)
            while not self._stopping:
                delay = self._turn(scheduler, self.elector)
                if delay > 0 and not self._stopping:
                    select.select([self._wake_r], [], [], delay)
        except (KeyboardInterrupt, SystemExit):
            self._stopping = True
        finally:
            if self._stopping:
                logger.info("beat: Shutting down...")
            self.sync()

    def _turn(self, scheduler: Scheduler, elector: Elector) -> float:
        """One turn of the loop; the seconds to sleep before the next."""
        try:
            was_leading = elector.leading and elector.lease is not None
            leading = elector.step()
            if leading and not was_leading and elector.lease is not None:
                scheduler.on_elected(elector.runs())
            delay = scheduler.tick() if leading else elector.step_in()
            if scheduler.should_sync():
                scheduler._do_sync()
            self._failures = 0
            return min(delay, elector.step_in())
        except LostLease as exc:
            logger.warning("beat: %s; standing by", exc)
            elector.lost()
            return 0.0
        except (CeleryError, OSError) as exc:
            delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)]
            self._failures += 1
            logger.error("beat: %s; trying again in %.0fs", " ".join(str(exc).split()), delay)
            return delay

    def sync(self) -> None:
        try:
            if self._scheduler is not None:
                self._scheduler.close()
            if self.elector is not None:
                self.elector.release()
        finally:
            self._is_stopped.set()

    def stop(self, wait: bool = False) -> None:
        """Ask beat to stop (any thread, or a signal handler without ``wait``); with
        ``wait``, until it has."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:  # the pipe is full of earlier wake-ups: the loop is awake
            pass
        if wait:
            self._is_stopped.wait()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class EmbeddedService(threading.Thread):
    """Beat in a daemon thread of a worker process (``celery worker -B``)."""

    def __init__(self, app: Celery, max_interval: float | None = None, **kwargs: Any) -> None:
        super().__init__(name="Beat", daemon=True)
        self.service = Service(app, max_interval=max_interval, **kwargs)

    def run(self) -> None:
        try:
            self.service.start(embedded_process=True)
        except Exception:
            logger.exception("beat: stopped by an error")

    def stop(self, timeout: float = 10.0) -> None:
        self.service.stop()
        self.join(timeout)
