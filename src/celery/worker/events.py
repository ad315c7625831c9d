"""A worker's events (``-E``, heartbeats), sent as Celery's worker sends them.

``worker-online`` when the worker is ready, ``worker-heartbeat`` every ``freq`` seconds
(2 by default, ``--heartbeat-interval``) and ``worker-offline`` at shutdown, unless
``--without-heartbeat``; Celery sends these whether or not task events are on, and monitors
(Flower, ``State``) tell live workers from dead ones by them. Task events (``task-received``,
``-started``, ``-succeeded``, ``-failed``, ``-retried``, ``-rejected``, ``-revoked``) only
with ``-E``/``worker_send_task_events`` or after the ``enable_events`` control command; the
consumer calls ``task`` from its hooks (``task-retried`` comes from the thread that ran the
task, before the retry's message is sent), and the dispatcher (``events/dispatcher.py``)
sends the events of one loop turn as one ``task.multi`` message. The same hooks feed the
worker's Prometheus metrics (``--metrics-port``, worker/metrics.py) when it has them: the
consumer's one test per hook (``task_events``) is true while events are sent or metrics
kept, and ``sending`` says which.

Thread-safety: everything runs on the consumer's loop, except that executor threads read
``tracer.event_fields`` (a plain bool written here): a task ending just as events are
switched may come with or without its result's repr, and ``task_outcome`` copes with both.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__, states
from ..events.dispatcher import EventDispatcher
from ..transport.base import CAP_BROADCAST

if TYPE_CHECKING:
    from ..app.base import Celery
    from .metrics import WorkerMetrics
    from .request import Outcome, Request
    from .tracer import Tracer

__all__ = ["HEARTBEAT_INTERVAL", "SOFTWARE_INFO", "WorkerEvents"]

logger = logging.getLogger("celery.worker.events")

#: Seconds between two heartbeats (Celery's default ``freq``).
HEARTBEAT_INTERVAL = 2.0
#: What Celery's worker says of itself in its worker events.
SOFTWARE_INFO: dict[str, Any] = {"sw_ident": "py-celery", "sw_ver": __version__, "sw_sys": platform.system()}


class WorkerEvents:
    """Sends one worker's events. Created and used on the consumer's loop.

    ``counts`` gives ``(active, processed)`` for the worker events: requests running now,
    tasks finished since start.
    """

    def __init__(self, app: Celery, transport: Any, hostname: str, tracer: Tracer | None,
                 counts: Callable[[], tuple[int, int]], task_events: bool = False,
                 heartbeat: bool = True, freq: float | None = None,
                 metrics: WorkerMetrics | None = None) -> None:
        self.tracer = tracer
        self.counts = counts
        self.freq = float(freq or HEARTBEAT_INTERVAL)
        self.available = CAP_BROADCAST in getattr(transport, "capabilities", ())
        if not self.available and task_events:
            logger.warning("-E/worker_send_task_events: the broker %s carries no events (it "
                           "has no fanout exchange); none will be sent", type(transport).__name__)
        self.heartbeat = heartbeat and self.available
        self.dispatcher = EventDispatcher(
            app=app, hostname=hostname, transport=transport, groups={"worker"},
            buffer_group={"task"}, loop=asyncio.get_running_loop(),
            enabled=self.available and (heartbeat or task_events))
        #: The worker's Prometheus metrics (worker/metrics.py), told of every task hook.
        self.metrics = metrics
        #: Whether task events are sent now.
        self.sending = False
        #: Whether the consumer's task hooks run: task events are sent or metrics kept. The
        #: consumer's hooks test this first (with neither, that one test is all they cost).
        self.task_events = metrics is not None
        if task_events and self.available:
            self.enable_tasks()
        self._stop = asyncio.Event()

    # -- switching task events (-E, enable_events/disable_events) -------------------------

    def enable_tasks(self) -> bool:
        """Send task events from now on; False if they were on already (or cannot be)."""
        if self.sending or not self.available:
            return False
        self.dispatcher.groups.add("task")
        self.dispatcher.enable()
        self.sending = self.task_events = True
        if self.tracer is not None:
            self.tracer.send_event = self._from_thread
            self.tracer.event_fields = True
        return True

    def disable_tasks(self) -> bool:
        """Stop sending task events; False if they were off already."""
        if not self.sending:
            return False
        self.dispatcher.groups.discard("task")
        self.sending = False
        self.task_events = self.metrics is not None
        if self.tracer is not None:
            self.tracer.event_fields = False
        if not self.heartbeat:
            self.dispatcher.disable()
        return True

    # -- worker events ---------------------------------------------------------------------

    def worker(self, type: str, **extra: Any) -> None:  # noqa: A002 - Celery's name
        active, processed = self.counts()
        self.dispatcher.send(type, freq=self.freq, active=active, processed=processed,
                             loadavg=_loadavg(), **SOFTWARE_INFO, **extra)

    async def run(self) -> None:
        """``worker-online`` now, then a heartbeat every ``freq`` seconds until ``close``."""
        if not self.heartbeat:
            return
        self.worker("worker-online")
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.freq)
                return
            except TimeoutError:
                self.worker("worker-heartbeat")

    async def close(self) -> None:
        """``worker-offline``, and what is buffered published (bounded wait)."""
        self._stop.set()
        if self.heartbeat:
            self.worker("worker-offline")
        if self.dispatcher.enabled:
            await self.dispatcher.aclose()
        if self.dispatcher.dropped:
            logger.warning("Events: %d event(s) were dropped while this worker ran",
                           self.dispatcher.dropped)

    # -- task events (consumer hooks; only called when ``task_events`` is on) --------------

    def task(self, type: str, req: Request, **fields: Any) -> None:  # noqa: A002
        if self.metrics is not None:
            self.metrics.task(type, req)
        if self.sending and req.task.send_events:
            self.dispatcher.send(type, uuid=req.id, **fields)

    def _from_thread(self, type: str, req: Request, **fields: Any) -> None:  # noqa: A002
        """``task`` from an executor thread (the tracer's ``task-retried``): run on the
        consumer's loop, in the order of the calls."""
        self.dispatcher.loop.call_soon_threadsafe(  # type: ignore[union-attr]
            functools.partial(self._send_if_on, type, req, fields))

    def _send_if_on(self, type: str, req: Request, fields: dict[str, Any]) -> None:  # noqa: A002
        # Not through ``task``: metrics count a retry by its outcome (RETRY), once.
        if self.sending and req.task.send_events:
            self.dispatcher.send(type, uuid=req.id, **fields)

    def unknown(self, name: str, task_id: str) -> None:
        """A message for a task not registered here (rejected)."""
        if self.metrics is not None:
            self.metrics.unknown(name)
        if self.sending:
            self.dispatcher.send("task-failed", uuid=task_id,
                                 exception=f"NotRegistered({name!r})")

    def received(self, req: Request) -> None:
        if self.metrics is not None:
            self.metrics.received(req)
        if not (self.sending and req.task.send_events):
            return
        headers = req.delivery.message.headers
        self.dispatcher.send(
            "task-received", uuid=req.id, name=req.name, args=headers.get("argsrepr"),
            kwargs=headers.get("kwargsrepr"), root_id=headers.get("root_id"),
            parent_id=headers.get("parent_id"), retries=headers.get("retries") or 0,
            eta=headers.get("eta"), expires=headers.get("expires"))

    def task_outcome(self, outcome: Outcome) -> None:
        """The event of a finished request, by its state."""
        if self.metrics is not None:
            self.metrics.outcome(outcome)
        if not self.sending:
            return
        req, state, info = outcome.request, outcome.state, outcome.event_fields or {}
        if state == states.SUCCESS:
            self.task("task-succeeded", req, result=info.get("result"), runtime=outcome.runtime)
        elif state == states.FAILURE:
            self.task("task-failed", req, exception=info.get("exception"),
                      traceback=info.get("traceback"))
        elif state == states.REJECTED:
            self.task("task-rejected", req, requeue=outcome.settle == "requeue")


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return [0.0, 0.0, 0.0]
