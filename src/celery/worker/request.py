"""Request: one execution of one task message."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..app.task import Context
from ..messaging.protocol import decode_body, epoch_of

if TYPE_CHECKING:
    from ..app.task import Task
    from ..transport.base import Delivery

__all__ = ["Halt", "Outcome", "Request"]

#: Request attributes the worker sets itself: a message header of the same name never
#: becomes one.
_WORKER_ONLY = frozenset({"children", "halt", "soft_deadline"})

logger = logging.getLogger("celery.worker.consumer")


class Halt:
    """What the consumer's thread and the thread running a task tell each other about it.

    * A flag set once by the consumer and read by the task's thread (terminate):
      ``threading.Event``'s ``set``/``is_set`` without its Condition, which cost more to
      make than the rest of a no-op task's request.
    * Who reports the task's end (``claim``), when a cold shutdown races it: the task's
      thread once the task function has returned or raised (its outcome is then reported:
      finish and ack), or the consumer while it still runs (its message is requeued and
      whatever the function does afterwards is dropped: no result, no signal, no retry
      message). Whoever claims first wins, so a message is never both requeued and
      reported (issue 20, item 5).

    ``_lock`` guards ``_set`` and ``_claimed``.
    """

    __slots__ = ("_lock", "_set", "_claimed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._claimed = ""

    def set(self) -> None:
        with self._lock:
            self._set = True

    def is_set(self) -> bool:
        with self._lock:
            return self._set

    def claim(self, who: str) -> bool:
        """True if ``who`` ("thread" or "consumer") is the first to claim the task's end,
        or claimed it already; any thread."""
        with self._lock:
            if not self._claimed:
                self._claimed = who
            return self._claimed == who


@dataclass(slots=True, eq=False)
class Request:
    """A delivery matched to its task. Made on the consumer loop, executed on an executor
    thread, settled back on the consumer loop; only one thread touches it at a time (the
    hand-offs between them are the synchronisation points)."""

    delivery: Delivery
    task: Task
    name: str
    id: str
    acks_late: bool
    store_result: bool
    #: ``time.monotonic()`` when it was accepted: set by the metrics' hook (worker/metrics.py),
    #: the only reader, so that a worker without metrics makes no clock call for it.
    received_at: float = 0.0
    #: Index of the executor slot group that runs it (loop worker number, or -1 for threads).
    slot: int = -1
    #: (hard, soft) time limits in seconds, None for none; set by the consumer on accept.
    limits: tuple[float | None, float | None] = (None, None)
    #: The hard-limit timer while it runs (consumer loop only).
    watchdog: Any = None
    #: time.time() when it was handed to an executor (0: not yet); ``inspect active``.
    started_at: float = 0.0
    #: Set by the consumer to stop it (revoke with terminate): ``Task.checkpoint()`` of a
    #: sync task raises once it is set. Two threads use it.
    halt: Halt = field(default_factory=Halt)
    #: ``header_time``'s answers, by header name (consumer loop only).
    _times: dict[str, float | None] | None = None
    #: With a STARTED state on its way to the backend: a ``concurrent.futures.Future`` the
    #: flusher resolves once it is written (a RETRY stored before the retry is sent waits
    #: for it, worker/tracer.py). Thread-safe itself; set before the task runs.
    started_written: Any = None

    @property
    def headers(self) -> dict[str, Any]:
        return self.delivery.message.headers

    def time_limits(self, default_hard: Any, default_soft: Any) -> tuple[float | None, float | None]:
        """(hard, soft) seconds: the message's ``timelimit`` header, else the task's
        ``time_limit``/``soft_time_limit``, else the worker's defaults (Celery's order)."""
        header = self.headers.get("timelimit") or (None, None)
        try:
            hard, soft = header
        except (TypeError, ValueError):
            hard = soft = None
        hard = _seconds(hard if hard is not None else (self.task.time_limit or default_hard))
        soft = _seconds(soft if soft is not None else (self.task.soft_time_limit or default_soft))
        return hard, soft

    def header_time(self, name: str) -> float | None:
        """Epoch seconds of the ``eta``/``expires`` header; None if absent or unreadable
        (logged once per request: the consumer reads ``expires`` again before it starts)."""
        times = self._times
        if times is not None and name in times:
            return times[name]
        value = self.headers.get(name)
        try:
            seconds = epoch_of(value)
        except (ValueError, TypeError, OverflowError):
            logger.warning("Task %s[%s]: ignoring unreadable %s %.200r", self.name, self.id,
                           name, value)
            seconds = None
        if times is None:
            times = self._times = {}
        times[name] = seconds
        return seconds

    def info(self, safe: bool = False, hostname: str | None = None) -> dict[str, Any]:
        """What ``inspect active/reserved/scheduled`` shows of it (Celery's ``Request.info``);
        ``safe`` gives the ``argsrepr``/``kwargsrepr`` strings instead of the arguments."""
        h = self.headers
        args: Any = h.get("argsrepr")
        kwargs: Any = h.get("kwargsrepr")
        if not safe:
            msg = self.delivery.message
            try:
                body = decode_body(msg.body, msg.content_type, msg.content_encoding,
                                   frozenset({msg.content_type}),  # accepted on receipt
                                   h.get("compression"))
                args, kwargs = body.args, body.kwargs
            except Exception:  # shown as their reprs: inspect must not fail on one message
                pass
        return {
            "id": self.id, "name": self.name, "args": args, "kwargs": kwargs, "type": self.name,
            "hostname": hostname, "time_start": self.started_at or None,
            "acknowledged": not self.acks_late and bool(self.started_at),
            "delivery_info": self.delivery.delivery_info, "worker_pid": os.getpid(),
        }

    def bare_context(self) -> Context:
        """A Context from the message's headers and properties alone (args and kwargs
        undecoded), for a state stored without running the task (revoked, hard time limit,
        worker lost), where Celery passes the request to the backend too: the ``rpc://``
        backend reads ``reply_to`` and ``correlation_id`` from it. Consumer loop."""
        g = self.headers.get
        props = self.delivery.message.properties
        return Context.of({
            "id": self.id, "task": self.name, "args": None, "kwargs": None,
            "retries": g("retries", 0) or 0, "group": g("group"),
            "group_index": g("group_index"), "root_id": g("root_id"),
            "parent_id": g("parent_id"), "correlation_id": props.get("correlation_id"),
            "reply_to": props.get("reply_to"), "delivery_info": self.delivery.delivery_info,
            "called_directly": False,
        })

    def context(self, args: list[Any], kwargs: dict[str, Any], embed: dict[str, Any],
                hostname: str) -> Context:
        """The ``task.request`` Context for this execution, as Celery fills it. Runs on the
        thread that executes the task.

        The message's headers and properties were decoded on the consumer's thread: its
        dicts, and the strings in them, are that thread's. On a free-threaded build, a lookup
        in a dict another thread made (whose keys and values no other thread has referenced
        yet) cannot take its lock-free path and locks the dict, one lookup at a time; two
        threads doing that for every task spun on those locks in ``sched_yield`` (no-op
        ``async def`` tasks cost 810 µs of worker CPU each, against 50 µs on 3.11). So each
        is copied first, in one locked pass, and the lookups below read this thread's own
        copy (94 µs). The copies are also what ``request.headers`` and
        ``request.properties`` give the task."""
        h = dict(self.headers)
        g = h.get
        props = dict(self.delivery.message.properties)
        fields = {  # a dict display: cheaper than 30 keyword arguments
            "id": self.id, "task": self.name, "args": args, "kwargs": kwargs,
            "retries": g("retries", 0) or 0, "eta": g("eta"), "expires": g("expires"),
            "group": g("group"), "group_index": g("group_index"),
            "root_id": g("root_id"), "parent_id": g("parent_id"),
            "origin": g("origin"), "shadow": g("shadow"), "timelimit": g("timelimit"),
            "argsrepr": g("argsrepr"), "kwargsrepr": g("kwargsrepr"),
            "ignore_result": bool(g("ignore_result", False)),
            "callbacks": embed.get("callbacks"), "errbacks": embed.get("errbacks"),
            "chain": embed.get("chain"), "chord": embed.get("chord"),
            "correlation_id": props.get("correlation_id"), "reply_to": props.get("reply_to"),
            "delivery_info": self.delivery.delivery_info, "hostname": hostname, "headers": h,
            "properties": props, "is_eager": False, "called_directly": False,
            "acks_late": self.acks_late,
        }
        # Every header is a request attribute, as in Celery: the sender's own
        # (``apply_async(headers=...)``, a tracer's ``traceparent``) included; none replaces
        # the fields above.
        for key, value in h.items():
            if key not in fields and key not in _WORKER_ONLY:
                fields[key] = value
        return Context.of(fields)


@dataclass(slots=True)
class Outcome:
    """What an execution produced, ready for the consumer to settle."""

    request: Request
    state: str
    #: Encoded result meta to store, or None when nothing is stored.
    payload: bytes | None
    runtime: float
    #: Requeue the message instead of acking it (cancelled by a cold shutdown).
    requeue: bool = False
    #: Only a state to store while the task goes on (STARTED): nothing is settled.
    interim: bool = False
    #: How the message is settled: "ack"; "reject" (dropped) or "requeue" (``Reject``).
    settle: str = "ack"
    #: The failure (ExceptionInfo) of a FAILURE, for the task's handlers; else None.
    einfo: Any = None
    #: The chord report of a chord member (worker/canvas.py PendingReport), made by the
    #: consumer once the result is stored; None for a task in no chord.
    chord_report: Any = None
    #: With task events on (worker/events.py), what the task's event says of how it ended,
    #: made on the thread that ran it: ``result`` (a repr), or ``exception``/``traceback``.
    event_fields: dict[str, Any] | None = None
    #: An interim state's ``concurrent.futures.Future``, resolved by the flusher once the
    #: state is written (``Request.started_written``).
    written: Any = None


def _seconds(value: Any) -> float | None:
    if value is None:  # the usual case: no limit (and no exception to raise and catch)
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return seconds if seconds > 0 else None
