"""Every error celery-asyncio raises, under one root.

::

    CeleryError
    ├── ImproperlyConfigured          bad setting, URL or scheme
    ├── NotRegistered (KeyError)      task name unknown to the registry
    ├── TaskError
    │   ├── Retry                     raised by Task.retry to request a retry
    │   ├── Ignore / Reject           task asks the worker to ignore / reject its message
    │   ├── MaxRetriesExceededError
    │   ├── TaskRevokedError
    │   └── ChordError                a chord member failed, or its body could not be sent
    ├── InvalidSignature (ValueError) a signature (canvas) dict that cannot be used
    ├── SchedulingError               beat could not send a periodic task
    ├── ParseException (ValueError)   a crontab pattern that cannot be parsed (celery.schedules)
    ├── TimeoutError                  AsyncResult.get timed out
    │   └── EventCaptureTimeout       no event came (also the builtin TimeoutError)
    ├── IncompleteStream              AsyncResult.iterdeps met a result not ready yet
    ├── TimeLimitExceeded / SoftTimeLimitExceeded
    ├── MessageError
    │   ├── ContentDisallowed         content type not in accept_content
    │   ├── DecodeError               payload could not be decoded
    │   └── InvalidMessage            decoded, but not a protocol v2 task message
    ├── OperationalError
    │   └── ConnectionLost            a broker/backend connection failed
    └── BackendError                  Celery's name; our backends raise ConnectionLost
        ├── BackendGetMetaError
        └── BackendStoreError

Celery's names are kept so that ``except celery.exceptions.X`` works unchanged.
Transports and backends convert their driver's exceptions into these at their boundary.
"""

from __future__ import annotations

import builtins

__all__ = [
    "BackendError",
    "CDeprecationWarning",
    "FixupWarning",
    "BackendGetMetaError",
    "BackendStoreError",
    "CeleryError",
    "ChordError",
    "ConnectionLost",
    "ContentDisallowed",
    "DecodeError",
    "EventCaptureTimeout",
    "Ignore",
    "ImproperlyConfigured",
    "SecurityError",
    "IncompleteStream",
    "InvalidMessage",
    "InvalidSignature",
    "MaxRetriesExceededError",
    "MessageError",
    "NotRegistered",
    "OperationalError",
    "Reject",
    "Terminated",
    "WorkerLostError",
    "Retry",
    "SchedulingError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
]


class CDeprecationWarning(DeprecationWarning):
    """Something Celery 5 still accepts and will drop (an old setting name)."""


class FixupWarning(UserWarning):
    """A fix-up (``celery.fixups.django``) that was asked for cannot be applied."""


class CeleryError(Exception):
    """Root of all celery-asyncio errors."""


class SecurityError(CeleryError):
    """A signed message that cannot be trusted: unknown signer, bad signature, bad key."""


class ImproperlyConfigured(CeleryError):
    """A setting, URL or scheme is invalid."""


class NotRegistered(CeleryError, KeyError):
    """The task name is not registered."""

    def __str__(self) -> str:
        return f"Task of kind {self.args[0]!r} never registered, please make sure it's imported."


class TaskError(CeleryError):
    """Base for errors about a task's execution."""


class Retry(TaskError):
    """Raised by ``Task.retry`` to tell the worker to retry the task."""

    def __init__(self, message=None, exc=None, when=None, is_eager=False, sig=None, **kwargs):
        self.message = message
        self.exc = exc
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        #: The retry message, when the worker is to publish it (``Task.retry`` inside a
        #: worker leaves publishing to the worker, so an async task never blocks its loop).
        self.message_to_send = kwargs.get("message_to_send")
        super().__init__(message, exc, when)

    def __str__(self) -> str:
        if self.message:
            return str(self.message)
        return f"Retry in {self.when}" + (f": {self.exc!r}" if self.exc else "")

    def __reduce__(self):
        return self.__class__, (self.message, self.exc, self.when)


class Ignore(TaskError):
    """The task asks the worker to ignore it: no state is stored."""


class Reject(TaskError):
    """The task asks the worker to reject (and maybe requeue) its message."""

    def __init__(self, reason=None, requeue=False):
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class MaxRetriesExceededError(TaskError):
    """The task was retried more than ``max_retries`` times."""

    def __init__(self, *args, task_args=None, task_kwargs=None, **kwargs):
        self.task_args = task_args
        self.task_kwargs = task_kwargs
        super().__init__(*args)


class TaskRevokedError(TaskError):
    """The task was revoked, so it has no result."""


class ChordError(TaskError):
    """A member of a chord's header failed (the body is not run), or the join failed."""


class InvalidSignature(CeleryError, ValueError):
    """A signature (a task call as a dict, e.g. a callback in a message) is malformed:
    an unknown ``subtask_type``, a missing task name, members that are not signatures."""


class SchedulingError(CeleryError):
    """Beat could not send a periodic task (``celery.beat.SchedulingError``)."""


class WorkerLostError(CeleryError):
    """The worker stopped (a cold shutdown) while the task ran; see reject_on_worker_lost."""


class Terminated(CeleryError):
    """Raised by ``Task.checkpoint()`` in a sync task revoked with ``terminate=True``."""


class TimeoutError(CeleryError):  # noqa: A001 - Celery's name
    """The operation timed out (for example ``AsyncResult.get(timeout=...)``)."""


class EventCaptureTimeout(TimeoutError, builtins.TimeoutError):
    """``EventReceiver.capture(timeout=...)`` saw no event for that long; also the builtin
    ``TimeoutError``, which is what upstream raises there (``socket.timeout``)."""


class IncompleteStream(CeleryError):
    """A result's dependencies were walked before they were all ready."""


class TimeLimitExceeded(CeleryError):
    """The task ran past its hard time limit."""


class SoftTimeLimitExceeded(CeleryError):
    """The task ran past its soft time limit; raised inside the task."""


class MessageError(CeleryError):
    """A broker message could not be turned into a task request."""


class ContentDisallowed(MessageError):
    """The message's content type is not in ``accept_content``."""


class DecodeError(MessageError):
    """The message body could not be decoded with its declared serializer."""


class InvalidMessage(MessageError):
    """The message decoded, but is not a valid protocol v2 task message."""


class OperationalError(CeleryError):
    """A broker or result backend operation failed."""


class ConnectionLost(OperationalError):
    """The connection to a broker or result backend was lost or refused."""


class BackendError(CeleryError):
    """Celery's error for a failed result backend operation.

    Kept so that code written for Celery imports and catches it (Flower does); our
    backends report a failed connection as ``ConnectionLost`` instead.
    """


class BackendGetMetaError(BackendError):
    """Celery's error for a failed read of a task's state."""


class BackendStoreError(BackendError):
    """Celery's error for a failed write of a task's state."""
