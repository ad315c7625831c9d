"""Cooperative abort: a client marks a task ABORTED in the result backend, and the task,
polling ``self.is_aborted()``, stops itself.

Celery's ``celery.contrib.abortable`` names are kept (Flower imports
``AbortableAsyncResult`` for its ``/api/task/abort`` call). Nothing stops the task from
outside: a task that never asks keeps running, and its own end state then replaces
ABORTED, as in Celery. It needs a result backend.

::

    @app.task(bind=True, base=AbortableTask)
    def long_job(self):
        for chunk in work():
            if self.is_aborted():
                return "aborted"
            process(chunk)

    long_job.AsyncResult(task_id).abort()
"""

from __future__ import annotations

from typing import Any

from ..app.task import Task
from ..result import AsyncResult

__all__ = ["ABORTED", "AbortableAsyncResult", "AbortableTask"]

#: The state ``abort()`` stores.
ABORTED = "ABORTED"


class AbortableAsyncResult(AsyncResult):
    """An ``AsyncResult`` that can ask its task to abort."""

    def is_aborted(self) -> bool:
        """Whether the task's state in the result backend is ABORTED."""
        return self.state == ABORTED

    def abort(self) -> None:
        """Store ABORTED for this task; the task sees it at its next ``is_aborted()``."""
        self.backend.store_result(self.id, None, ABORTED)

    async def ais_aborted(self) -> bool:
        return (await self._aget_meta())["status"] == ABORTED

    async def aabort(self) -> None:
        await self.backend.astore_result(self.id, None, ABORTED)


class AbortableTask(Task):
    """A task base whose body can ask whether a client aborted it."""

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AbortableAsyncResult:  # noqa: N802
        return AbortableAsyncResult(task_id, app=self.app, task_name=self.name, **kwargs)

    def is_aborted(self, **kwargs: Any) -> bool:
        """Whether this run (or ``task_id=``) was aborted; call it from the task body."""
        task_id = kwargs.get("task_id") or self.request.id
        if not task_id:
            raise RuntimeError("is_aborted() needs a task id: call it from the task's body "
                               "or pass task_id=")
        return self.AsyncResult(str(task_id)).is_aborted()
