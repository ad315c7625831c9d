"""Canvas follow-ups of the outcomes the consumer settles itself.

A task revoked or expired before it started, terminated, stopped by its hard time limit or
lost to a cold shutdown never reaches the tracer's end (worker/tracer.py), yet its chord
must be told (REVOKED or FAILURE: the chord then fails instead of waiting forever) and, for
a FAILURE, its chain failed and its errbacks called, as Celery does. The consumer hands
such a request here; its canvas fields are read from the message and the follow-ups run as
an asyncio task on the consumer's loop (``adrive``: a ``def`` errback runs on a thread).
Sync worker threads leave their chord reports here too (``follow``: one pipeline for the
reports of many members, where each thread would wait a round trip for its own).

Used on the consumer's loop only.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Any

from .. import states
from ..canvas.effects import Duty, adrive
from ..canvas.followups import after_end
from ..messaging.protocol import decode_body

if TYPE_CHECKING:
    from ..app.base import Celery
    from .request import Request

__all__ = ["SettledByConsumer"]

logger = logging.getLogger("celery.worker.consumer")


class SettledByConsumer:
    """Runs the follow-ups of requests the consumer settles (see the module docstring)."""

    def __init__(self, app: Celery, hostname: str, accept: frozenset[str]) -> None:
        self.app = app
        self.hostname = hostname
        self.accept = accept
        self._running: set[asyncio.Task[None]] = set()

    def ended(self, req: Request, state: str, exc: BaseException) -> None:
        """``req`` ended in ``state`` (REVOKED or FAILURE) with ``exc``, settled by the
        consumer: start its follow-ups, if its message has any."""
        ctx = self._context(req)
        if ctx is None:
            return
        if not (ctx.chord or (state == states.FAILURE and (ctx.chain or ctx.errbacks))):
            return
        task = asyncio.get_running_loop().create_task(
            adrive(after_end(self.app, ctx, state, exc), self.app),
            name=f"canvas-followups-{req.id}")
        self._running.add(task)
        task.add_done_callback(self._done)

    def follow(self, duty: Duty[None], context: contextvars.Context, name: str) -> None:
        """Run ``duty``, follow-ups a sync worker thread left to this loop (its chord
        report: ``Outcome.followup``), in ``context``, that task's contextvars."""
        task = asyncio.get_running_loop().create_task(adrive(duty, self.app), name=name,
                                                      context=context)
        self._running.add(task)
        task.add_done_callback(self._done)

    def _context(self, req: Request) -> Any:
        msg = req.delivery.message
        try:
            body = decode_body(msg.body, msg.content_type, msg.content_encoding, self.accept)
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
        """Wait (up to ``timeout`` seconds) for the follow-ups still running (shutdown)."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)
