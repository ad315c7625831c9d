"""The task registry: task name -> Task."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..exceptions import NotRegistered

if TYPE_CHECKING:
    from .task import Task

__all__ = ["TaskRegistry"]


class TaskRegistry(dict[str, "Task"]):
    """Maps names to tasks. Writes take ``_lock`` (tasks may be registered by imports in any
    thread); reads are plain dict lookups, safe on free-threaded Python."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def register(self, task: Task) -> Task:
        with self._lock:
            self[task.name] = task
        return task

    def unregister(self, name: str) -> None:
        with self._lock:
            try:
                del self[name]
            except KeyError:
                raise NotRegistered(name) from None

    def __missing__(self, key: str) -> Task:
        raise NotRegistered(key)
