"""The canvas duties of the consumer's loop: chord reports, and the follow-ups of the outcomes
the consumer settles itself.

**Chord reports.** A chord member's report (``canvas/join.py``) is made here, by the
flusher (worker/flusher.py), after the member's result is stored and before its message is
acknowledged: so a chord's body never runs (and no waiter sees it done) before every
member's own result is stored, as in Celery, and a report lost to a broken connection is
made again before the message is acked (the recording is idempotent: a member counts once).
The tracer hands the report over with the outcome (``Outcome.chord_report``: a
``PendingReport``, through the consumer's outbox, a thread-safe queue); the reports that are
due run together, so the backend joins them in few calls (Redis: one script call per chord
and flush). Each runs in a copy of its task's context, so that a body it sends has that
task as its parent, as when the task sends it.

**Outcomes settled here.** A task revoked or expired before it started, terminated,
stopped by its hard time limit or lost to a cold shutdown never reaches the tracer's end,
yet its chord must be told (REVOKED or FAILURE: the chord then fails instead of waiting
forever) and, for a FAILURE, its chain failed and its errbacks called, as Celery does. The
consumer hands such a request to ``ended``; its canvas fields are read from the message.

Used on the consumer's loop only.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import states
from ..canvas.effects import Duty, adrive
from ..canvas.followups import after_end
from ..canvas.join import report_to_chord
from ..exceptions import ConnectionLost
from ..messaging.protocol import decode_body

if TYPE_CHECKING:
    from ..app.base import Celery
    from .request import Request

__all__ = ["ConsumerCanvas", "PendingReport"]

logger = logging.getLogger("celery.worker.consumer")


@dataclass(slots=True)
class PendingReport:
    """A chord member's report, to be made once its result is stored."""

    request: Any  #: the member's request (Context): its chord, group and index
    state: str
    value: Any
    #: The contextvars to run it in (the task's own: current task, request).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)

    def duty(self, app: Celery) -> Duty[None]:
        return report_to_chord(app, self.request, self.state, self.value)


class ConsumerCanvas:
    """Chord reports and consumer-settled follow-ups (see the module docstring)."""

    def __init__(self, app: Celery, hostname: str, accept: frozenset[str]) -> None:
        self.app = app
        self.hostname = hostname
        self.accept = accept
        self._running: set[asyncio.Task[None]] = set()

    # -- chord reports (queued and retried by the flusher) -----------------------------------

    async def run_reports(self, reports: list[PendingReport]) -> list[PendingReport]:
        """Make ``reports`` (their results are stored), all at once, so that the backend
        joins them in few calls; returns those that could not reach the backend (to be made
        again: a member counts once)."""
        if not reports:
            return []
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(adrive(r.duty(self.app), self.app), context=r.context)
                 for r in reports]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failed = []
        for report, outcome in zip(reports, outcomes, strict=True):
            if isinstance(outcome, ConnectionLost):
                failed.append(report)
            elif isinstance(outcome, BaseException):  # report_to_chord logs what it expects
                logger.error("Task %s: its chord report failed: %r", report.request.id, outcome)
        return failed

    # -- outcomes settled by the consumer -------------------------------------------------

    def ended(self, req: Request, state: str, exc: BaseException) -> PendingReport | None:
        """``req`` ended in ``state`` (REVOKED or FAILURE) with ``exc``, settled by the
        consumer: start its follow-ups, if its message has any; its chord report is
        returned, for the flusher to make once its result is stored."""
        ctx = self._context(req)
        if ctx is None:
            return None
        if state == states.FAILURE and (ctx.chain or ctx.errbacks):
            task = asyncio.get_running_loop().create_task(
                adrive(after_end(self.app, ctx, state, exc, chord=False), self.app),
                name=f"canvas-followups-{req.id}")
            self._running.add(task)
            task.add_done_callback(self._done)
        return PendingReport(ctx, state, exc) if ctx.chord else None

    def _context(self, req: Request) -> Any:
        msg = req.delivery.message
        try:
            body = decode_body(msg.body, msg.content_type, msg.content_encoding, self.accept,
                               msg.headers.get("compression"))
        except Exception:  # undecodable: it has no follow-ups we could read
            return None
        embed = body.embed
        if not (embed.get("chord") or embed.get("chain") or embed.get("errbacks")):
            return None
        return req.context(body.args, body.kwargs, embed, self.hostname)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Canvas follow-ups failed: %r", task.exception())

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for the follow-ups still running (shutdown);
        the reports are the flusher's, made by its last flushes."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)
