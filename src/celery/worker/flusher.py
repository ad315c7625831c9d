"""The consumer's writes, batched: results to the result backend, then the chord reports of
those results, then acks, requeues, rejects, deferrals and republishes to the broker.

The consumer queues writes here as outcomes come in; one coroutine writes each batch (the
results in one call of the backend, each kind of settle in one call of the transport). The
two sides fail independently. While the result backend is away, results wait here and are
retried with backoff, and the broker's settles go on: an early ack is never held back by a
result. A settle that must follow its result (the ack or reject of an ``acks_late`` task
whose result is stored, of a revoked one marked REVOKED) travels with that result and is
queued for the broker once the result is written, so such a message stays reserved, and is
redelivered if the worker dies, until its result is safe. A chord member's report
(worker/canvas.py) waits for its result the same way, and its settle waits for the report:
a report that cannot reach the backend is made again later, before the message is acked.

Memory is bounded: past ``MAX_PENDING_RESULTS`` results or ``MAX_PENDING_BYTES`` of them
waiting for the backend, ``backlogged`` is true and the consumer stops fetching (the tasks
stay in the broker) until the backend takes them; nothing is dropped while the worker runs.
What a shutdown cannot write (``drain`` waits ``DRAIN_TIMEOUT``, 5 s) is logged by task id:
a result of a task whose message was acked is lost; an ``acks_late`` task's message stays
reserved and runs again after the visibility timeout.

Everything here runs on the consumer's event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from ..exceptions import ConnectionLost
from ..utils.text import mask_url

if TYPE_CHECKING:
    from ..backends.base import ResultBackend
    from ..transport.base import Delivery, Transport
    from .results import ResultGate

__all__ = ["MAX_PENDING_BYTES", "MAX_PENDING_RESULTS", "Flusher"]

logger = logging.getLogger("celery.worker.consumer")

#: Results waiting for the backend past which the consumer stops fetching.
MAX_PENDING_RESULTS = 10_000
#: ... or bytes of encoded results.
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: Longest wait between two attempts at a side that fails (seconds).
MAX_BACKOFF = 5.0
#: Seconds a shutdown waits for the queued writes (``drain``), each side tried again at once.
DRAIN_TIMEOUT = 5.0
#: How many task ids a shutdown's error names at most.
_NAMED = 20


#: A result to write: (task id, encoded meta, state, the settle to queue once it is written
#: or None, the chord report to make once it is written or None). A plain tuple: one is made
#: per task.
_Store: TypeAlias = "tuple[str, bytes, str, tuple[str, Delivery] | None, Any, Any]"
#: A chord report to make, and the settle that waits for it (or None).
_Report: TypeAlias = "tuple[Any, tuple[str, Delivery] | None]"


class _Side:
    """Backoff and logging for one side (the result backend, or the broker)."""

    def __init__(self, what: str, url: str) -> None:
        self.what, self.url = what, url
        self.retry_at = 0.0
        self.backoff = 0.1
        self.failing = False

    def due(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, exc: Exception, now: float, waiting: int) -> None:
        if isinstance(exc, ConnectionLost):
            log = logger.warning if not self.failing else logger.debug
            log("%s unreachable (%s): %s. %d writes wait; retrying in %.1fs", self.what,
                self.url, exc, waiting, self.backoff)
        elif not self.failing:
            logger.exception("Unexpected error writing to the %s (%s); %d writes wait, "
                             "retrying in %.1fs", self.what.lower(), self.url, waiting,
                             self.backoff)
        else:
            logger.error("Writing to the %s failed again: %r", self.what.lower(), exc)
        self.failing = True
        self.retry_at = now + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def worked(self) -> None:
        if self.failing:
            logger.warning("%s reachable again (%s)", self.what, self.url)
        self.failing, self.backoff, self.retry_at = False, 0.1, 0.0


class Flusher:
    """Queues of writes and the coroutine that writes them (see the module docstring)."""

    def __init__(self, backend: ResultBackend, transport: Transport, results: ResultGate,
                 settled: Callable[[int], None], room: Callable[[], None],
                 busy: Callable[[], bool],
                 make_reports: Callable[[list[Any]], Awaitable[list[Any]]]) -> None:
        self._backend = backend
        self._transport = transport
        self._results = results
        self._settled = settled  # n settles the broker confirmed (they leave the window)
        self._room = room  # the backlog of results is gone: fetching may go on
        self._busy = busy  # tasks are running: their outcomes may join the next batch
        self._make_reports = make_reports  # makes chord reports; returns those to retry
        self.stores: list[_Store] = []
        #: Chord reports whose results are stored (or were never to be), to make.
        self.reports: list[_Report] = []
        self.acks: list[Delivery] = []
        self.requeues: list[Delivery] = []
        self.rejects: list[Delivery] = []
        self.defers: list[tuple[Delivery, float]] = []
        #: Early-acked messages abandoned by a cold shutdown, to be published again.
        self.republishes: list[Delivery] = []
        self.needed = asyncio.Event()
        #: True while a batch is being written (its items are out of the lists above).
        self.flushing = False
        self._store_bytes = 0
        self._backlog_logged = False
        self._backend_side = _Side("Result backend", mask_url(str(backend.url or "")))
        self._broker_side = _Side("Broker", mask_url(str(transport.url)))

    # -- queueing (consumer loop) ----------------------------------------------------------

    def store(self, task_id: str, payload: bytes, state: str,
              then: tuple[str, Delivery] | None = None, report: Any = None,
              written: concurrent.futures.Future[None] | None = None) -> None:
        """Queue a result; ``then`` (``("acks" | "rejects", delivery)``): the settle that
        waits for it; ``report``: a chord report to make once it is written (the settle then
        waits for that too); ``written``: a future to resolve once it is written (another
        thread may wait on it). Counted by the ResultGate until written."""
        self.stores.append((task_id, payload, state, then, report, written))
        self._store_bytes += len(payload)
        self._results.add(1)

    def report(self, report: Any, then: tuple[str, Delivery] | None = None) -> None:
        """Queue a chord report whose result is stored already (or none is stored), and the
        settle that waits for it."""
        self.reports.append((report, then))

    def waiting(self) -> bool:
        """Anything queued and not written."""
        return bool(self.stores or self.reports or self.acks or self.requeues or self.rejects
                    or self.defers or self.republishes)

    def backlogged(self) -> bool:
        """Too many results wait for the backend: the consumer stops fetching (logged once
        each time it starts)."""
        full = (len(self.stores) >= MAX_PENDING_RESULTS
                or self._store_bytes >= MAX_PENDING_BYTES)
        if full and not self._backlog_logged:
            logger.warning("%d results (%d KiB) wait for the result backend (%s): fetching no "
                           "more tasks until it takes them", len(self.stores),
                           self._store_bytes // 1024, self._backend_side.url)
        self._backlog_logged = full
        return full

    # -- writing ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches as they are queued, until cancelled by ``drain``."""
        loop = asyncio.get_running_loop()
        while True:
            retry_in = self._retry_in(loop.time())
            if retry_in is None:
                await self.needed.wait()
            else:
                try:
                    await asyncio.wait_for(self.needed.wait(), retry_in)
                except TimeoutError:
                    pass
            if self._busy():  # tasks still run: a loop turn, so that the outcomes they
                await asyncio.sleep(0)  # post meanwhile join this batch (performance.md)
            self.needed.clear()
            self.flushing = True
            try:
                await self._flush_once(loop.time())
            finally:
                self.flushing = False

    def _retry_in(self, now: float) -> float | None:
        """Seconds until a side that failed with writes waiting may be tried again."""
        waits = []
        if (self.stores or self.reports) and self._backend_side.failing:
            waits.append(self._backend_side.retry_at - now)
        if self._settles_waiting() and self._broker_side.failing:
            waits.append(self._broker_side.retry_at - now)
        return max(min(waits), 0.0) if waits else None

    def _settles_waiting(self) -> bool:
        return bool(self.acks or self.requeues or self.rejects or self.defers
                    or self.republishes)

    async def _flush_once(self, now: float) -> None:
        # Results first, then the chord reports they release: the settles these release
        # join this batch.
        if self.stores and self._backend_side.due(now):
            await self._write_results(now)
        if self.reports and self._backend_side.due(now):
            await self._write_reports(now)
        if self._settles_waiting() and self._broker_side.due(now):
            await self._settle(now)

    async def _write_results(self, now: float) -> None:
        batch, self.stores = self.stores, []
        try:
            await self._backend._aset_many([s[:3] for s in batch])
        except Exception as exc:
            self.stores[:0] = batch
            self._backend_side.failed(exc, now, len(self.stores))
            return
        except BaseException:
            self.stores[:0] = batch
            raise
        self._backend_side.worked()
        self._store_bytes -= sum(len(s[1]) for s in batch)
        self._results.done(len(batch))
        for *_, then, report, written in batch:
            if written is not None:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    written.set_result(None)  # (a waiter that gave up may have cancelled it)
            if report is not None:
                self.reports.append((report, then))
            elif then is not None:
                getattr(self, then[0]).append(then[1])
        if not self.backlogged():
            self._room()

    async def _write_reports(self, now: float) -> None:
        batch, self.reports = self.reports, []
        try:
            failed = await self._make_reports([report for report, _ in batch])
        except BaseException:
            self.reports[:0] = batch
            raise
        retry = {id(report) for report in failed}
        for report, then in batch:
            if id(report) in retry:
                self.reports.append((report, then))
            elif then is not None:
                getattr(self, then[0]).append(then[1])
        if failed:
            self._backend_side.failed(ConnectionLost(f"{len(failed)} chord reports not made"),
                                      now, len(self.reports))
        else:
            self._backend_side.worked()

    async def _settle(self, now: float) -> None:
        t = self._transport
        defer: Any = getattr(t, "defer", None)
        ops: Sequence[tuple[str, Callable[[Any], Awaitable[Any]] | None, bool]] = (
            ("acks", t.ack, True), ("requeues", t.requeue, True), ("rejects", t.reject, True),
            ("defers", defer, True), ("republishes", self._republish, False))
        for attr, op, settles in ops:
            items = getattr(self, attr)
            if not items or op is None:  # (only transports that can defer get deferrals)
                continue
            setattr(self, attr, [])
            try:
                await op(items)
            except Exception as exc:
                getattr(self, attr)[:0] = items
                self._broker_side.failed(exc, now, len(items))
                return
            except BaseException:
                getattr(self, attr)[:0] = items
                raise
            if settles:
                self._settled(len(items))
        self._broker_side.worked()

    async def _republish(self, deliveries: list[Delivery]) -> None:
        await self._transport.apublish_many([d.message for d in deliveries])

    # -- shutdown --------------------------------------------------------------------------

    async def drain(self, flusher: asyncio.Task[None]) -> None:
        """Write out everything still queued (``DRAIN_TIMEOUT`` at most, each side tried
        again at once), then stop ``flusher`` (this object's ``run``) and log what is left."""
        self._backend_side.retry_at = self._broker_side.retry_at = 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        while (self.flushing or self.waiting()) and loop.time() < deadline:
            self.needed.set()
            await asyncio.sleep(0.02)
        flusher.cancel()
        # Bounded: a Redis client may swallow a cancellation that lands mid-command.
        await asyncio.wait({flusher}, timeout=5)
        self._report_left()

    def _report_left(self) -> None:
        if self.stores:
            late = [s[0] for s in self.stores if s[3] is not None]
            acked = [s[0] for s in self.stores if s[3] is None]
            logger.error(
                "Shutdown with %d results not stored (result backend %s unreachable): the "
                "results of %d tasks whose messages were acked are lost (%s); %d acks_late "
                "tasks stay unacked and run again after the visibility timeout (%s)",
                len(self.stores), self._backend_side.url, len(acked), _named(acked),
                len(late), _named(late))
        if self.reports:
            ids = [str(report.request.id) for report, _ in self.reports]
            logger.error("Shutdown with %d chord reports not made (result backend %s "
                         "unreachable): acks_late members run again after the visibility "
                         "timeout; the chords of the others never complete (%s)",
                         len(ids), self._backend_side.url, _named(ids))
        settles = len(self.acks) + len(self.requeues) + len(self.rejects) + len(self.defers)
        if settles:
            logger.error("Shutdown with %d acks/requeues/rejects not done (broker %s "
                         "unreachable): those messages are redelivered after the visibility "
                         "timeout", settles, self._broker_side.url)
        if self.republishes:
            ids = [str(d.message.headers.get("id")) for d in self.republishes]
            logger.error("Shutdown with %d acknowledged messages abandoned by the cold "
                         "shutdown not published again (broker %s unreachable): lost (%s)",
                         len(ids), self._broker_side.url, _named(ids))


def _named(ids: list[str]) -> str:
    more = f" and {len(ids) - _NAMED} more" if len(ids) > _NAMED else ""
    return ", ".join(ids[:_NAMED]) + more if ids else "none"
