"""``Task``: what the events of one task say about it (part of ``events.state``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from .. import states

if TYPE_CHECKING:
    from .state import State
    from .workers import Worker

__all__ = ["TASK_EVENT_TO_STATE", "Task"]

#: The state a task event moves its task to; other subjects give ``subject.upper()``.
TASK_EVENT_TO_STATE = {
    "sent": states.PENDING,
    "received": states.RECEIVED,
    "started": states.STARTED,
    "failed": states.FAILURE,
    "retried": states.RETRY,
    "succeeded": states.SUCCESS,
    "revoked": states.REVOKED,
    "rejected": states.REJECTED,
}
#: An event's stamps, not merged from an event of an earlier state (upstream merges them:
#: a late ``task-started`` would set ``clock``/``timestamp`` back below the SUCCESS ones).
_STAMPS = frozenset({"timestamp", "clock", "local_received", "type", "utcoffset"})
#: Keys of an event never copied onto a Task (links the State keeps itself).
_OWN = frozenset({"uuid", "state", "worker", "client", "children", "cluster_state", "root",
                  "parent"})


class Task:
    """A task as its events describe it.

    Events may arrive out of order (a worker's ``task-received`` after its
    ``task-succeeded``, batched events from two nodes): an event whose state comes *before*
    the current one in Celery's precedence (``states.precedence``) does not move the state
    back; its fields are merged, but not its stamps (``timestamp``, ``clock``), and for
    ``RECEIVED`` only the fields it is the source of (``merge_rules``). ``RETRY`` always
    applies.

    Thread-safety: changed only through ``State`` (under its lock); read from any thread.
    """

    _fields = ("uuid", "name", "state", "received", "sent", "started", "rejected",
               "succeeded", "failed", "retried", "revoked", "args", "kwargs", "eta",
               "expires", "retries", "worker", "result", "exception", "timestamp",
               "runtime", "traceback", "exchange", "routing_key", "clock", "client", "root",
               "root_id", "parent", "parent_id", "children")
    #: What ``info()`` lists by default.
    _info_fields = ("args", "kwargs", "retries", "result", "eta", "runtime", "expires",
                    "exception", "exchange", "routing_key", "root_id", "parent_id")
    #: Fields an event of a state that comes earlier may still set.
    merge_rules = {states.RECEIVED: ("name", "args", "kwargs", "parent_id", "root_id",
                                     "retries", "eta", "expires")}

    name = received = sent = started = succeeded = failed = retried = revoked = None
    rejected = args = kwargs = eta = expires = retries = result = exception = None
    timestamp = runtime = traceback = exchange = routing_key = root_id = parent_id = None
    client: str | None = None
    worker: Worker | None = None
    state: str = states.PENDING
    clock: int = 0

    def __init__(self, uuid: str | None = None, cluster_state: State | None = None,
                 children: Iterable[str] | None = None, **kwargs: Any) -> None:
        self.uuid = uuid
        self.cluster_state = cluster_state
        known = cluster_state.tasks.data if cluster_state is not None else {}
        self.children: WeakSet[Task] = WeakSet(known[c] for c in children or () if c in known)
        self.__dict__.update(kwargs)

    def event(self, type_: str, timestamp: float | None = None,
              local_received: float | None = None,
              fields: Mapping[str, Any] | None = None) -> None:
        """Apply one event of subject ``type_`` (``received``, ``succeeded``, ...)."""
        fields = {k: v for k, v in (fields or {}).items() if k not in _OWN}
        state = TASK_EVENT_TO_STATE.get(type_)
        if state is not None:
            setattr(self, type_, timestamp)  # e.g. self.succeeded = when it happened
        else:
            state = type_.upper()  # a custom event
        earlier = states.precedence(state) > states.precedence(self.state)
        if state != states.RETRY and self.state != states.RETRY and earlier:
            keep = self.merge_rules.get(state)
            if keep is not None:
                fields = {k: v for k, v in fields.items() if k in keep}
            else:  # the stamps stay those of the event that set the state
                fields = {k: v for k, v in fields.items() if k not in _STAMPS}
        else:
            fields.update(state=state, timestamp=timestamp)
        self.__dict__.update(fields)

    @property
    def id(self) -> str | None:
        return self.uuid

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    @property
    def origin(self) -> str | None:
        """Who sent the last event: the client for ``task-sent``, else the worker."""
        if self.client and not self.worker:
            return self.client
        return self.worker.hostname if self.worker is not None else None

    def _linked(self, task_id: str | None) -> Task | None:
        if task_id is None or self.cluster_state is None:
            return None
        return self.cluster_state.tasks.data.get(task_id)  # (.data: without reordering)

    @property
    def parent(self) -> Task | None:
        return self._linked(self.parent_id)

    @property
    def root(self) -> Task | None:
        return self._linked(self.root_id)

    def info(self, fields: Iterable[str] | None = None,
             extra: Iterable[str] = ()) -> dict[str, Any]:
        """The set (not None) ones of ``fields`` (``_info_fields`` by default) and ``extra``."""
        names = list(fields) if fields is not None else [*self._info_fields, *extra]
        return {k: v for k in names if (v := getattr(self, k, None)) is not None}

    def as_dict(self) -> dict[str, Any]:
        """Every ``_fields`` attribute; ``children``, ``root`` and ``parent`` as task ids."""
        out = {k: getattr(self, k) for k in self._fields}
        out["children"] = [child.uuid for child in list(self.children)]
        for link in ("root", "parent"):
            out[link] = out[link].uuid if out[link] is not None else None
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.uuid == self.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"<Task: {self.name}({self.uuid}) {self.state} clock:{self.clock}>"
