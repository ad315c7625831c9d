"""Sync publishing for the Redis transport (``RedisTransport.publish``, any thread).

``Confirmed`` (the default, kombu's way) writes each LPUSH and waits for Redis's reply:
a ``publish`` that returned was accepted by Redis, and one Redis refuses (OOM, READONLY,
WRONGTYPE) raises ``OperationalError`` from that very call. It spends a round trip per
message, which bounds one producer thread at about 1/RTT messages a second.

``Pipeline`` (``broker_transport_options={"publish_pipeline": True}``) writes each LPUSH to
one connection and returns without waiting for the reply; replies are read later, in order.
Several times faster for a producer that sends many messages from one thread, at the price
described below: a refusal is raised by a later call, possibly in unrelated code, or never.

What a returned ``publish`` guarantees, pipelined:

* The whole command is in the kernel's socket buffer: it reaches Redis even if this process
  dies right after (as with a confirmed publish, Redis may still lose it if it crashes
  before persisting it).
* Replies are read before a later publish (every ``DRAIN_EVERY`` messages, or when the
  last send is older than ``IDLE_DRAIN`` seconds), by ``confirm`` (``AsyncResult.get()``
  calls it before waiting) and by ``close`` (also run at interpreter exit). At most ``WINDOW`` messages wait for replies;
  a publish beyond that waits for some.
* A message Redis refused (an error reply: OOM, READONLY, WRONGTYPE, ...) is logged with
  its task id when its reply is read, and raised as ``OperationalError`` to its sender:
  the thread, or the asyncio task, whose context published it (a ``_Sender`` kept in a
  context variable), from its next ``publish`` (which then sends nothing), ``confirm`` or
  ``confirm_own``. A refusal whose sender is gone is raised to the next caller.
* ``confirm_own`` waits for the replies to the calling context's messages only: a worker
  calls it after each task that published (worker/tracer.py), so that a refused message
  fails the task that sent it, as a confirmed publish raising inside the task would.
* A broken connection: replies that did arrive are read first, then the messages still
  unconfirmed are sent again on a new connection, retried with backoff. A write to a
  connection the server already closed succeeds locally, so after a pause (``IDLE_DRAIN``)
  a publish first checks that the connection is still open; within a burst a closed
  connection shows at the next read of replies, and everything unanswered is resent. As for a confirmed
  publish retried after a connection error, Redis may have run some of them already:
  delivery is at least once. If the retries run out, ``ConnectionLost`` is raised; that
  publish's own message is dropped (its caller is told), the earlier ones are kept and sent
  with the next call.

Thread-safety: one connection per process, shared by every thread. ``_lock`` guards the
connection, ``_unconfirmed``, ``_refused``, ``_broken``, ``_pid``, ``_last_send`` and the
counters ``_sent``/``_answered``; a publish holds it for its write and any reads
(microseconds, or a round trip when it waits). A ``_Sender`` belongs to one context (a
thread's, or an asyncio task's copy), which alone reads and writes its ``last``.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import valkey
from valkey.exceptions import ResponseError, ValkeyError

from ..exceptions import ConnectionLost, OperationalError

__all__ = ["DRAIN_EVERY", "DRIVER_ERRORS", "IDLE_DRAIN", "RETRYABLE", "WINDOW", "Confirmed",
           "Pipeline", "SyncPublisher", "backoff"]

logger = logging.getLogger(__name__)

#: Read the replies that have arrived once this many messages wait for theirs.
DRAIN_EVERY = 16
#: ... or when the previous send is older than this (seconds): a producer that paused
#: learns of refusals and of a connection the server closed before it writes again.
IDLE_DRAIN = 0.001
#: Most messages waiting for replies; a publish beyond this waits until half are read.
WINDOW = 1024

#: What the driver raises for a failed command; the connection errors among them, retried.
#: The Redis transport and its mailbox use these too.
DRIVER_ERRORS = (ValkeyError, OSError)
RETRYABLE = (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError, OSError)
_T = TypeVar("_T")


def backoff(retries: int, first: float) -> Iterator[float | None]:
    """Delays before each retry (doubling from ``first``, at most 1 s), then None: give up."""
    for n in range(retries):
        yield min(first * 2**n, 1.0)
    yield None


class SyncPublisher:
    """``RedisTransport.publish``: confirmed one by one (``Confirmed``), or pipelined
    (``Pipeline``) when ``pipelined``. Any thread; ``_lock`` guards the two lazily made
    halves (``_confirmed``, ``_pipeline``)."""

    def __init__(self, make_pool: Callable[[], Any], safe_url: str, retries: int,
                 pipelined: bool) -> None:
        self._make_pool = make_pool
        self._safe_url = safe_url
        self._retries = retries
        self.pipelined = pipelined
        self._lock = threading.Lock()
        self._confirmed: Confirmed | None = None
        self._pipeline: Pipeline | None = None

    def _connections(self) -> Callable[[], Any]:
        """A maker of sync connections configured as the transport's pool's."""
        pool = self._make_pool()
        return lambda: pool.connection_class(**pool.connection_kwargs)

    def publish(self, key: str, payload: str, task_id: str | None) -> None:
        if self.pipelined:
            with self._lock:
                if self._pipeline is None:
                    self._pipeline = Pipeline(self._connections(), self._safe_url,
                                              self._retries)
                    atexit.register(_close_at_exit, weakref.ref(self._pipeline))
                pipeline = self._pipeline
            pipeline.publish(key, payload, task_id)
            return
        with self._lock:
            if self._confirmed is None:
                self._confirmed = Confirmed(self._connections(), self._safe_url, self._retries)
            confirmed = self._confirmed
        confirmed.publish(key, payload, task_id)

    def confirm(self) -> None:
        """``Pipeline.confirm`` when pipelined; a confirmed publish has nothing to wait for."""
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.confirm()

    def confirm_own(self) -> None:
        """``Pipeline.confirm_own`` when pipelined (see ``confirm``)."""
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.confirm_own()

    def close(self) -> None:
        """Confirm and disconnect; the next publish connects again. Idempotent."""
        with self._lock:
            confirmed, pipeline = self._confirmed, self._pipeline
            self._confirmed = self._pipeline = None
        if pipeline is not None:
            pipeline.close()
        if confirmed is not None:
            confirmed.close()


def _close_at_exit(ref: weakref.ref[Pipeline]) -> None:
    pipeline = ref()
    if pipeline is not None:
        pipeline.close()


def pack_lpush(key: str, payload: str) -> bytes:
    """The RESP encoding of ``LPUSH key payload``."""
    k, p = key.encode(), payload.encode()
    return b"*3\r\n$5\r\nLPUSH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(p), p)


class Confirmed:
    """Confirmed LPUSHes: each ``publish`` writes its command packed once and reads the
    reply on a connection of its own, taken from a stack of idle ones (made on demand, at
    most ``MAX_IDLE`` kept), without valkey-py's command path (about half of a confirmed
    publish's CPU through its client).

    A connection error (a connection the server closed while idle shows as one at the
    read) is retried on a new connection with backoff, ``retries`` times, as a confirmed
    publish retried after a connection error is: at least once. An error reply raises
    ``OperationalError`` naming the task. Thread-safety: ``_lock`` guards ``_idle`` and
    ``_pid`` (a forked child drops its parent's connections); a connection taken off the
    stack is used by one thread only until it is put back.
    """

    MAX_IDLE = 8

    def __init__(self, make_connection: Callable[[], Any], safe_url: str, retries: int) -> None:
        self._make_connection = make_connection
        self._safe_url = safe_url
        self._retries = retries
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def publish(self, key: str, payload: str, task_id: str | None) -> None:
        """Send ``LPUSH key payload`` and wait for Redis's reply. Any thread.

        Raises:
            OperationalError: Redis refused the message.
            ConnectionLost: no connection worked within the retries.
        """
        command = pack_lpush(key, payload)
        conn = self._take()
        try:
            for delay in backoff(self._retries, 0.1):
                try:
                    conn.send_packed_command([command], False)  # connects if need be
                    conn.read_response()
                    return
                except ResponseError as exc:
                    raise OperationalError(f"Redis at {self._safe_url} refused the message of "
                                           f"task {task_id}: {exc}") from exc
                except RETRYABLE as exc:
                    conn.disconnect()
                    if delay is None:
                        raise ConnectionLost(f"Redis publish failed on {self._safe_url}: "
                                             f"{exc}") from exc
                    logger.debug("Publish on %s failed (%s), retrying in %.1fs",
                                 self._safe_url, exc, delay)
                time.sleep(delay)
        finally:
            self._give(conn)

    def _take(self) -> Any:
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's connections are not ours
                self._pid, self._idle = os.getpid(), []
            if self._idle:
                return self._idle.pop()
        return self._make_connection()

    def _give(self, conn: Any) -> None:
        with self._lock:
            if len(self._idle) < self.MAX_IDLE and os.getpid() == self._pid:
                self._idle.append(conn)
                return
        conn.disconnect()

    def close(self) -> None:
        """Disconnect the idle connections. Idempotent; any thread."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()


class _Sender:
    """Who published (one per context): the number of its last message ``confirm_own`` has
    not waited for yet. A refusal holds it weakly: once its context is gone, nobody is."""

    __slots__ = ("last", "__weakref__")

    def __init__(self) -> None:
        self.last = 0


class Pipeline:
    """Pipelined LPUSHes on one connection, replies read later (see the module docstring)."""

    def __init__(self, make_connection: Callable[[], Any], safe_url: str, retries: int) -> None:
        self._make_connection = make_connection
        self._safe_url = safe_url
        self._retries = retries
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn = make_connection()
        #: Sent, reply not read yet, in send order: (packed command, task id, sender).
        self._unconfirmed: deque[tuple[bytes, str | None, weakref.ref[_Sender]]] = deque()
        #: Refused messages not raised yet: (sender, task id, error).
        self._refused: list[tuple[weakref.ref[_Sender], str | None, str]] = []
        #: Messages sent, and replies read, since the connection was made (or the fork).
        self._sent = self._answered = 0
        #: This pipeline's sender in the current context (per pipeline: counts are its own).
        self._senders: contextvars.ContextVar[_Sender] = contextvars.ContextVar(
            f"publish-sender-{id(self):x}")
        self._broken = False  # the connection failed; reconnect and resend before using it
        self._last_send = 0.0

    def __repr__(self) -> str:
        return f"<Pipeline {self._safe_url} unconfirmed={len(self._unconfirmed)}>"

    def publish(self, key: str, payload: str, task_id: str | None) -> None:
        """Write ``LPUSH key payload``; raise a refusal read for an earlier message first."""
        command = pack_lpush(key, payload)
        with self._lock:
            self._after_fork()
            waiting = len(self._unconfirmed)
            if time.monotonic() - self._last_send > IDLE_DRAIN:
                self._read(until=None)
                if not self._unconfirmed:
                    self._guarded(self._check_closed, False)
            elif waiting >= DRAIN_EVERY:
                self._read(until=None)
            if len(self._unconfirmed) >= WINDOW:
                self._read(until=WINDOW // 2)
            self._raise_refused()
            sender = self._sender()
            self._unconfirmed.append((command, task_id, weakref.ref(sender)))
            try:
                self._guarded(lambda: self._conn.send_packed_command([command], False), True)
            except ConnectionLost:
                self._unconfirmed.pop()  # ours: the caller is told it was not sent
                raise
            self._last_send = time.monotonic()
            self._sent += 1
            sender.last = self._sent

    def confirm(self) -> None:
        """Wait for the replies to every message sent so far; raise any refusal. Any thread.

        Blocks at most about one round trip when messages are in flight; returns at once
        when none are (an unlocked peek: a thread's own earlier publishes are visible to it).
        """
        if not self._unconfirmed and not self._refused:
            return
        with self._lock:
            self._after_fork()
            self._read(until=0)
            sender = self._senders.get(None)
            if sender is not None:
                sender.last = 0
            self._raise_refused()

    def confirm_own(self) -> None:
        """Wait for the replies to the messages the calling context (thread, or asyncio
        task) sent since its last ``confirm_own``; raise their refusals. Returns at once if
        it sent none; else blocks at most about one round trip."""
        sender = self._senders.get(None)
        if sender is None or not sender.last:
            return
        last = sender.last
        with self._lock:
            self._after_fork()
            sender.last = 0
            if self._answered < last:  # still unanswered: the replies sent after ours wait
                self._read(until=self._sent - last)
            self._raise_refused()

    def close(self) -> None:
        """Confirm what is in flight (logging, not raising, failures) and disconnect."""
        with self._lock:
            try:
                if os.getpid() == self._pid:
                    self._read(until=0)
                    self._raise_refused()
            except (ConnectionLost, OperationalError) as exc:
                logger.error("Closing the publisher of %s: %s", self._safe_url, exc)
            finally:
                self._unconfirmed.clear()
                self._conn.disconnect()

    # -- under _lock -------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child, start over: the parent owns its connection and messages."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._conn = self._make_connection()
            self._unconfirmed.clear()
            self._refused.clear()
            self._broken = False
            self._answered = self._sent

    def _read(self, until: int | None) -> None:
        """Read the replies that have arrived, then block until at most ``until`` wait."""
        pending = self._unconfirmed
        while pending:
            if until is None or len(pending) <= until:
                if not self._guarded(lambda: self._conn.can_read(0), False):
                    return
            try:
                self._guarded(self._conn.read_response, False)
            except ResponseError as exc:
                _, task_id, sender = pending[0]
                self._refused.append((sender, task_id, str(exc)))
                logger.error("Redis at %s refused the message of task %s: %s",
                             self._safe_url, task_id, exc)
            pending.popleft()
            self._answered += 1

    def _check_closed(self) -> None:
        """With no reply due, anything readable is the server closing the connection (a
        write to it would vanish): reading it raises the ConnectionError that reconnects."""
        if self._conn.can_read(0):
            reply = self._conn.read_response()
            raise valkey.exceptions.ConnectionError(f"unexpected reply {reply!r}")

    def _sender(self) -> _Sender:
        sender = self._senders.get(None)
        if sender is None:
            sender = _Sender()
            self._senders.set(sender)
        return sender

    def _raise_refused(self) -> None:
        """Raise the refusals of the calling context's messages, and of senders gone."""
        if not self._refused:
            return
        me = self._senders.get(None)
        refused = [r for r in self._refused if r[0]() in (me, None)]
        if refused:
            self._refused = [r for r in self._refused if r[0]() not in (me, None)]
            listed = "; ".join(f"task {task_id}: {error}" for _, task_id, error in refused[:5])
            more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
            raise OperationalError(
                f"Redis at {self._safe_url} refused {len(refused)} message(s) published "
                f"earlier from this process: {listed}{more}"
            )

    def _guarded(self, op: Callable[[], _T], resend_covers_op: bool) -> _T | None:
        """Run ``op`` on the connection; on a connection error reconnect, resend every
        unconfirmed message and run ``op`` again (unless the resend already did its work),
        with backoff, ``_retries`` times at most."""
        error: BaseException = valkey.exceptions.ConnectionError("it failed earlier")
        if not self._broken:
            try:
                return op()
            except RETRYABLE as exc:
                self._conn.disconnect()
                self._broken = True
                error = exc
        for delay in backoff(self._retries, 0.1):
            if delay is None:
                raise ConnectionLost(
                    f"Redis publish failed on {self._safe_url}: {error}; messages "
                    f"published earlier that wait for a reply are sent again by the "
                    f"next publish"
                ) from error
            logger.debug("Publish connection to %s failed (%s), retrying in %.1fs",
                         self._safe_url, error, delay)
            time.sleep(delay)
            try:
                self._conn.connect()
                if self._unconfirmed:
                    self._conn.send_packed_command([c for c, _, _ in self._unconfirmed], False)
                self._broken = False
                return None if resend_covers_op else op()
            except RETRYABLE as exc:
                self._conn.disconnect()
                self._broken = True
                error = exc
        raise AssertionError("unreachable")  # pragma: no cover: backoff ends with None
