"""Celery's signals: hooks a program connects to, sent at points in a task's and a worker's life.

    from celery.signals import task_success

    @task_success.connect
    def on_success(sender=None, result=None, **kwargs):
        ...

    @task_success.connect(sender="proj.add")    # only for this task (name or Task object)
    def on_add(sender=None, result=None, **kwargs):
        ...

Receivers get ``sender`` plus the keyword arguments Celery documents for each signal, and
must accept ``**kwargs``. An exception in a receiver is logged and does not stop the others
or the task (as Celery's ``send``). Task signals are sent on the thread that runs the task
(a loop worker's event loop for ``async def`` tasks: receivers must not block there).

Thread-safety: receivers are kept as an immutable tuple that ``connect``/``disconnect``
replace under ``Signal._lock``; ``send`` reads the current tuple once and needs no lock, so
sending costs nothing measurable when no one is connected.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = [
    "Signal",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "beat_embedded_init",
    "beat_init",
    "before_task_publish",
    "setup_logging",
    "task_failure",
    "task_internal_error",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
]

logger = logging.getLogger(__name__)

_ANY = object()

#: (key, receiver reference, sender filter). The reference is a weakref (or a callable
#: returning the function, for strong references), so a receiver that is garbage
#: collected stops being called, as in Celery.
_Entry = tuple[Any, Callable[[], Any], Any]


class Signal:
    """A named hook. ``connect`` receivers; ``send`` calls every one that matches."""

    def __init__(self, name: str, providing_args: frozenset[str] | None = None) -> None:
        self.name = name
        self.providing_args = providing_args or frozenset()
        self._lock = threading.Lock()
        self._receivers: tuple[_Entry, ...] = ()

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    @property
    def receivers(self) -> tuple[_Entry, ...]:
        return self._receivers

    def connect(self, receiver: Callable[..., Any] | None = None, *, sender: Any = _ANY,
                weak: bool = True, dispatch_uid: Any = None) -> Any:
        """Connect ``receiver``; usable as ``@sig.connect`` or ``@sig.connect(sender=...)``.

        ``sender`` limits the receiver to one sender (for task signals, a task name or Task).
        ``dispatch_uid`` makes connecting the same receiver twice a no-op.
        """
        if receiver is None:
            return lambda fn: self.connect(fn, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        key = (dispatch_uid if dispatch_uid is not None else _id(receiver), _sender_key(sender))
        ref: Callable[[], Any]
        if weak:
            ref = weakref.WeakMethod(receiver) if hasattr(receiver, "__self__") else weakref.ref(receiver)
        else:
            ref = lambda: receiver  # noqa: E731 - a strong reference with the weakref interface
        with self._lock:
            if not any(entry[0] == key for entry in self._receivers):
                self._receivers = (*self._receivers, (key, ref, sender))
        return receiver

    def disconnect(self, receiver: Callable[..., Any] | None = None, *, sender: Any = _ANY,
                   dispatch_uid: Any = None) -> bool:
        """Disconnect a receiver; returns True if it was connected."""
        key = (dispatch_uid if dispatch_uid is not None else _id(receiver), _sender_key(sender))
        with self._lock:
            kept = tuple(entry for entry in self._receivers if entry[0] != key)
            found = len(kept) != len(self._receivers)
            self._receivers = kept
        return found

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Any, Any]]:
        """Call every matching receiver; returns ``[(receiver, response or exception)]``."""
        entries = self._receivers
        if not entries:
            return []
        responses: list[tuple[Any, Any]] = []
        dead = False
        for _, ref, wanted in entries:
            receiver = ref()
            if receiver is None:
                dead = True
                continue
            if wanted is not _ANY and not _matches(wanted, sender):
                continue
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                logger.exception("Signal handler %r raised: %r", receiver, exc)
                response = exc
            responses.append((receiver, response))
        if dead:
            with self._lock:
                self._receivers = tuple(e for e in self._receivers if e[1]() is not None)
        return responses

    send_robust = send


def _id(receiver: Any) -> Any:
    if hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)


def _sender_key(sender: Any) -> Any:
    if sender is _ANY:
        return None
    return sender if isinstance(sender, str) else id(sender)


def _matches(wanted: Any, sender: Any) -> bool:
    if wanted is sender or wanted == sender:
        return True
    # A task may be named by its Task object or by its name, either way round.
    name = getattr(sender, "name", None)
    return (isinstance(wanted, str) and wanted == name) or getattr(wanted, "name", _ANY) == sender


# -- tasks ------------------------------------------------------------------------------------

#: Before a task message is sent. sender: task name; body, exchange, routing_key, headers,
#: properties, declare, retry_policy.
before_task_publish = Signal("before_task_publish")
#: After a task message was sent. sender: task name; body, exchange, routing_key, headers,
#: properties.
after_task_publish = Signal("after_task_publish")
#: A worker accepted a task message. sender: the consumer; request.
task_received = Signal("task_received")
#: Before a task runs. sender: the task; task_id, task, args, kwargs.
task_prerun = Signal("task_prerun")
#: After a task ran. sender: the task; task_id, task, args, kwargs, retval, state.
task_postrun = Signal("task_postrun")
#: A task succeeded. sender: the task; result.
task_success = Signal("task_success")
#: A task is to be retried. sender: the task; request, reason, einfo.
task_retry = Signal("task_retry")
#: A task failed. sender: the task; task_id, exception, args, kwargs, traceback, einfo.
task_failure = Signal("task_failure")
#: The worker itself failed while running a task. sender: the task; task_id, args, kwargs,
#: request, exception, traceback, einfo.
task_internal_error = Signal("task_internal_error")
#: A task was revoked or expired. sender: the task; request, terminated, signum, expired.
task_revoked = Signal("task_revoked")
#: A message named a task this worker does not know. sender: the consumer; name, id,
#: message, exc.
task_unknown = Signal("task_unknown")
#: A message was rejected (not a valid task message). sender: the consumer; message, exc.
task_rejected = Signal("task_rejected")

# -- worker -----------------------------------------------------------------------------------

#: The worker is starting (before it connects). sender: the worker.
worker_init = Signal("worker_init")
#: Sent for compatibility at worker start (there are no child processes). sender: the worker.
worker_process_init = Signal("worker_process_init")
#: The worker consumes. sender: the worker.
worker_ready = Signal("worker_ready")
#: A shutdown was asked for. sender: hostname; sig, how ("Warm" or "Cold"), exitcode.
worker_shutting_down = Signal("worker_shutting_down")
#: The worker stopped. sender: the worker.
worker_shutdown = Signal("worker_shutdown")

# -- beat -------------------------------------------------------------------------------------

#: Beat is starting. sender: the beat Service.
beat_init = Signal("beat_init")
#: Beat is starting inside a worker (``-B``), after ``beat_init``. sender: the beat Service.
beat_embedded_init = Signal("beat_embedded_init")

# -- logging ----------------------------------------------------------------------------------

#: Before logging is configured; if any receiver is connected, the worker leaves logging to
#: it. loglevel, logfile, format, colorize.
setup_logging = Signal("setup_logging")
#: After the root logger was set up. logger, loglevel, logfile, format, colorize.
after_setup_logger = Signal("after_setup_logger")
#: After the task logger (``celery.task``, parent of ``get_task_logger`` loggers) was set
#: up. logger, loglevel, logfile, format, colorize.
after_setup_task_logger = Signal("after_setup_task_logger")
