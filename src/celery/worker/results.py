"""Results stored by the executor thread itself, when the consumer's flusher has none to batch.

A result normally goes from the executor thread to the consumer's loop (the outbox, one
wake-up) and is written there by the flusher, in a batch with the others that came
meanwhile: in a burst, one script call stores hundreds. A task that finishes alone gains
nothing from that: its batch is itself, and the hop costs a thread wake-up and a turn of
the loop before the write, on the round trip its caller waits for. So an executor with
nothing else to do (no request waiting for its threads and no other thread running one, or
no other task on its loop) hands its result here, and ``hand_over`` writes it at once,
blocking, on the executor's thread (``ResultBackend.store_now``: Redis with JSON), when no
other result is on its way to the flusher and no other executor thread is writing one. At
most one result is written this way at a time; while it is, results go to the flusher,
which batches them.

The same task's results keep their order: a STARTED state posted earlier is counted until
the flusher wrote it, so the final result of that task goes the usual way behind it. A
task settled by the consumer meanwhile (hard time limit, terminated) is not "alone": its
executor knows it was abandoned. The outcome still goes to the consumer, without its
payload once stored, and settles the message there (acks after the result is written).

A write that fails (Redis down or slow: the backend gives up after about a second) leaves
the result to the flusher, which retries with backoff, and stops direct writes for
``PAUSE_AFTER_FAILURE`` seconds, so that an outage does not hold every lone task's thread.

Thread-safety: ``_lock`` guards ``_queued`` (results on the flusher's way and not yet
written: counted when posted, and by the consumer's loop when it queues one for the
flusher; uncounted by that loop once it has taken the posted ones in, and once written),
``_writing`` (a direct write is under way) and ``_paused_until``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends.base import ResultBackend
    from .request import Outcome

__all__ = ["ResultGate"]

logger = logging.getLogger(__name__)

#: Seconds without direct writes after one failed.
PAUSE_AFTER_FAILURE = 5.0


class ResultGate:
    """Counts results on their way to the flusher; lets a lone one be written at once."""

    def __init__(self, backend: ResultBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._queued = 0
        self._writing = False
        self._paused_until = 0.0

    @property
    def queued(self) -> int:
        """Results posted or queued for the flusher and not yet written (for tests)."""
        with self._lock:
            return self._queued

    def hand_over(self, outcome: Outcome, alone: bool) -> Outcome:
        """The outcome to post to the consumer (executor thread): without its payload if it
        was written here; otherwise counted as on its way to the flusher."""
        if outcome.payload is None:
            return outcome
        if alone and not outcome.interim:
            now = time.monotonic()
            with self._lock:
                write = not self._queued and not self._writing and now >= self._paused_until
                self._writing = self._writing or write
            if write:
                return self._write(outcome)
        with self._lock:
            self._queued += 1
        return outcome

    def _write(self, outcome: Outcome) -> Outcome:
        stored = failed = False
        req = outcome.request
        try:
            assert outcome.payload is not None
            stored = self._backend.store_now(req.id, outcome.payload, outcome.state)
        except Exception as exc:  # the flusher retries it, with backoff
            failed = True
            logger.warning("Storing the result of %s[%s] on its thread failed (%s); the "
                           "consumer stores it, and does so for the next %.0f s", req.name,
                           req.id, exc, PAUSE_AFTER_FAILURE)
        with self._lock:  # counted before the gate reopens: no window without either
            self._writing = False
            if not stored:
                self._queued += 1
            if failed:
                self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        if stored:  # the outcome is this thread's alone until it is posted: no copy needed
            outcome.payload = None
        return outcome

    def add(self, count: int) -> None:
        """``count`` results queued for the flusher by the consumer (its loop)."""
        with self._lock:
            self._queued += count

    def done(self, count: int) -> None:
        """``count`` results written by the flusher, or posted ones taken in (its loop)."""
        with self._lock:
            self._queued -= count
