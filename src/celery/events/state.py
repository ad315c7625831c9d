"""``State``: an in-memory picture of the cluster built from its events (Celery's
``celery.events.state``), as ``celery events`` and Flower keep one.

Feed it every event a receiver captures (``EventReceiver(handlers={"*": state.event})``):
workers are tracked by hostname (``worker-online``/``-heartbeat``/``-offline``, and every
task event counts as a sign of life), tasks by uuid. Both are kept in ``LRUCache``s of
bounded size. Events need the fields a receiver adds (``local_received``, and ``clock``
for task events); see ``EventReceiver.event_from_message``.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import count, islice
from typing import Any
from weakref import WeakSet, ref

from .. import states
from ..utils.lru import LRUCache
from .tasks import TASK_EVENT_TO_STATE, Task
from .workers import HEARTBEAT_DRIFT_MAX, HEARTBEAT_EXPIRE_WINDOW, Worker, heartbeat_expires

__all__ = [
    "HEARTBEAT_DRIFT_MAX", "HEARTBEAT_EXPIRE_WINDOW", "TASK_EVENT_TO_STATE", "State", "Task",
    "Worker", "heartbeat_expires",
]

Event = dict[str, Any]
#: ``State.event``'s answer: ``((worker or task or None, created), subject)``.
Outcome = tuple[tuple[Any, bool], str]


class CallableDefaultdict(defaultdict):
    """A ``defaultdict`` that can also be called: ``state.tasks_by_type["add"]`` is a set of
    tasks, ``state.tasks_by_type("add", limit=10)`` lists them newest first."""

    def __init__(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.fun = fun
        super().__init__(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fun(*args, **kwargs)


class State:
    """Records workers and tasks from events.

    Args:
        callback: called as ``callback(state, event)`` after each event is applied.
        max_workers_in_memory, max_tasks_in_memory: bounds of ``workers`` and ``tasks``.
        on_node_join: called with a Worker seen for the first time or going online.
        on_node_leave: called with a Worker going offline, which is then forgotten
            (without it, an offline worker stays, with ``alive`` False).
        now: the wall clock workers' ``alive`` is judged by (a fake one in tests).

    Thread-safety: ``event``, ``clear`` and ``freeze_while`` may be called from any thread
    (``_mutex``, reentrant, serializes them; callbacks run under it). Reading ``workers``,
    ``tasks`` and the iterators from another thread is safe (the caches lock themselves)
    but may see an event half applied; ``freeze_while`` gives a consistent view.
    """

    event_count = 0
    task_count = 0
    #: How many (clock, timestamp) entries per task ``tasks_by_time`` keeps at most.
    heap_multiplier = 4

    def __init__(self, callback: Callable[[State, Event], Any] | None = None,
                 workers: Any = None, tasks: Any = None, taskheap: list | None = None,
                 max_workers_in_memory: int = 5000, max_tasks_in_memory: int = 10000,
                 on_node_join: Callable[[Worker], Any] | None = None,
                 on_node_leave: Callable[[Worker], Any] | None = None,
                 tasks_by_type: dict[str, Any] | None = None,
                 tasks_by_worker: dict[str, Any] | None = None, *,
                 now: Callable[[], float] = time.time) -> None:
        self.event_callback = callback
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory
        self.workers: LRUCache[str, Worker] = (LRUCache(max_workers_in_memory)
                                               if workers is None else workers)
        self.tasks: LRUCache[str, Task] = (LRUCache(max_tasks_in_memory)
                                           if tasks is None else tasks)
        self._taskheap: list[tuple[Any, ...]] = [] if taskheap is None else taskheap
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self._now = now
        self._mutex = threading.RLock()
        self._seen_types: set[str] = set()
        self._tasks_to_resolve: dict[str, WeakSet[Task]] = {}
        self._seq = count()  # breaks ties in the task heap
        self.tasks_by_type = CallableDefaultdict(self._tasks_by_type, WeakSet)
        self.tasks_by_type.update(tasks_by_type or {})
        self.tasks_by_worker = CallableDefaultdict(self._tasks_by_worker, WeakSet)
        self.tasks_by_worker.update(tasks_by_worker or {})

    # -- applying events -------------------------------------------------------------------

    def event(self, event: Event) -> Outcome:
        """Apply one event; ``((worker or task, created), subject)``, or ``((None, False),
        subject)`` for an event of another group or without the fields it needs."""
        with self._mutex:
            self.event_count += 1
            group, _, subject = str(event.get("type", "")).partition("-")
            if group == "worker":
                outcome = self._worker_event(subject, event)
            elif group == "task":
                outcome = self._task_event(subject, event)
            else:
                outcome = (None, False), subject
            if self.event_callback is not None:
                self.event_callback(self, event)
            return outcome

    def _worker_event(self, subject: str, event: Event) -> Outcome:
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return (None, False), subject
        offline = subject == "offline"
        worker = self.workers.get(hostname)
        created = worker is None
        if worker is None:
            worker = Worker(hostname, now=self._now)
            if offline:
                created = False  # an unknown worker leaving: not recorded
            else:
                self.workers[hostname] = worker
        worker.event(subject, event.get("timestamp"), event.get("local_received"), event)
        if self.on_node_join is not None and (created or subject == "online"):
            self.on_node_join(worker)
        if offline and self.on_node_leave is not None:
            self.on_node_leave(worker)
            self.workers.pop(hostname, None)
        return (worker, created), subject

    def _task_event(self, subject: str, event: Event) -> Outcome:
        uuid = event.get("uuid")
        if not isinstance(uuid, str):
            return (None, False), subject
        hostname, timestamp = event.get("hostname"), event.get("timestamp")
        local_received = event.get("local_received")
        task, created = self.get_or_create_task(uuid)
        worker = None
        if subject == "sent":  # from the client that sent it, not from a worker
            task.client = hostname
        elif isinstance(hostname, str):
            worker, _ = self.get_or_create_worker(hostname)
            task.worker = worker
            if local_received is not None:
                worker.event(None, timestamp, local_received)
        self._record_time(task, event.get("clock"), timestamp, hostname)
        if subject == "received":
            self.task_count += 1
        task.event(subject, timestamp, local_received, event)
        if task.name is not None:
            self._seen_types.add(task.name)
            self.tasks_by_type[task.name].add(task)
        if worker is not None:
            self.tasks_by_worker[worker.hostname].add(task)
        self._link_family(task)
        return (task, created), subject

    def _record_time(self, task: Task, clock: Any, timestamp: Any, origin: Any) -> None:
        heap = self._taskheap
        entry = (clock if isinstance(clock, int) else 0,
                 timestamp if isinstance(timestamp, int | float) else 0.0,
                 next(self._seq), origin, ref(task))
        if len(heap) >= self.max_tasks_in_memory * self.heap_multiplier:
            del heap[0]
        if not heap or entry > heap[-1]:
            heap.append(entry)
        else:
            bisect.insort(heap, entry)

    def _link_family(self, task: Task) -> None:
        if task.parent_id:
            parent = self.tasks.data.get(task.parent_id)
            if parent is not None:
                parent.children.add(task)
            else:  # the parent's events have not come (yet)
                pending = self._tasks_to_resolve
                pending.setdefault(task.parent_id, WeakSet()).add(task)
                while len(pending) > self.max_tasks_in_memory:
                    del pending[next(iter(pending))]
        waiting = self._tasks_to_resolve.pop(task.uuid, None) if task.uuid else None
        if waiting:
            task.children.update(waiting)

    # -- lookups ---------------------------------------------------------------------------

    def get_or_create_worker(self, hostname: str, **kwargs: Any) -> tuple[Worker, bool]:
        """``(worker, created)``; ``kwargs`` update an existing worker or make the new one."""
        with self._mutex:
            worker = self.workers.get(hostname)
            if worker is not None:
                if kwargs:
                    worker.update(kwargs)
                return worker, False
            worker = self.workers[hostname] = Worker(hostname, now=self._now, **kwargs)
            return worker, True

    def get_or_create_task(self, uuid: str) -> tuple[Task, bool]:
        """``(task, created)``."""
        with self._mutex:
            task = self.tasks.get(uuid)
            if task is not None:
                return task, False
            task = self.tasks[uuid] = Task(uuid, cluster_state=self)
            return task, True

    def task_types(self) -> list[str]:
        """The names of every task type seen, sorted."""
        return sorted(self._seen_types)

    def alive_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.alive]

    def itertasks(self, limit: int | None = None) -> Iterator[tuple[str, Task]]:
        """``(uuid, task)`` from the least recently used, at most ``limit`` of them."""
        return islice(self.tasks.items(), limit)

    def tasks_by_time(self, limit: int | None = None,
                      reverse: bool = True) -> Iterator[tuple[str, Task]]:
        """``(uuid, task)`` ordered by their events' (clock, timestamp), newest first
        (``reverse``); each task once, at most ``limit`` tasks."""
        with self._mutex:
            heap = list(self._taskheap)
        seen: set[str] = set()
        for entry in reversed(heap) if reverse else heap:
            task = entry[-1]()
            if task is not None and task.uuid is not None and task.uuid not in seen:
                seen.add(task.uuid)
                yield task.uuid, task
                if limit is not None and len(seen) >= limit:
                    return

    #: Celery's older name.
    tasks_by_timestamp = tasks_by_time

    def _tasks_by_type(self, name: str, limit: int | None = None,
                       reverse: bool = True) -> Iterator[tuple[str, Task]]:
        found = ((u, t) for u, t in self.tasks_by_time(reverse=reverse) if t.name == name)
        return islice(found, limit)

    def _tasks_by_worker(self, hostname: str, limit: int | None = None,
                         reverse: bool = True) -> Iterator[tuple[str, Task]]:
        found = ((u, t) for u, t in self.tasks_by_time(reverse=reverse)
                 if t.worker is not None and t.worker.hostname == hostname)
        return islice(found, limit)

    # -- clearing --------------------------------------------------------------------------

    def freeze_while(self, fun: Callable[..., Any], *args: Any, clear_after: bool = False,
                     **kwargs: Any) -> Any:
        """Call ``fun`` with no event applied meanwhile; then ``clear()`` if asked."""
        with self._mutex:
            try:
                return fun(*args, **kwargs)
            finally:
                if clear_after:
                    self._clear()

    def clear_tasks(self, ready: bool = True) -> None:
        with self._mutex:
            self._clear_tasks(ready)

    def _clear_tasks(self, ready: bool = True) -> None:
        """Forget the finished tasks (``ready``), or every task."""
        if ready:
            unfinished = [(u, t) for u, t in self.tasks.items()
                          if t.state not in states.READY_STATES]
            self.tasks.clear()
            self.tasks.update(unfinished)
        else:
            self.tasks.clear()
        self._taskheap[:] = []

    def _clear(self, ready: bool = True) -> None:
        self.workers.clear()
        self._clear_tasks(ready)
        self.event_count = 0
        self.task_count = 0

    def clear(self, ready: bool = True) -> None:
        """Forget the workers and the tasks (all, or the finished ones), reset the counts."""
        with self._mutex:
            self._clear(ready)

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={len(self.tasks)}>"
