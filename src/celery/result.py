"""AsyncResult: the handle to a task's state and return value, sync and awaitable."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from . import states
from ._state import current_task_var, get_current_app

if TYPE_CHECKING:
    from .app.base import Celery
    from .backends.base import ResultBackend

__all__ = ["AsyncResult", "EagerResult", "ResultBase"]

_SYNC_SUBTASK_ERROR = (
    "Never call result.get() within a task: waiting for another task from inside a task can "
    "deadlock the worker. Use a callback (link=...) or, in an async task, await the result."
)


class ResultBase:
    """Base for all result types."""

    parent: Any = None


class AsyncResult(ResultBase):
    """The state and return value of a task, by id.

    Reads go to the app's result backend. ``get()`` blocks (from any thread, even one running
    an event loop); ``await result`` / ``aget()`` wait on the caller's loop. Neither polls:
    backends wake waiters when the result is stored (pub/sub on Redis).
    Instances are cheap and not shared between threads by the library.
    """

    def __init__(self, id: str, backend: ResultBackend | None = None, task_name: str | None = None,
                 app: Celery | None = None, parent: Any = None) -> None:
        if id is None:
            raise ValueError(f"AsyncResult requires valid id, not {type(id)}")
        self.app = app or get_current_app()
        self.id = str(id)
        self._backend = backend
        self.name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None

    task_id = property(lambda self: self.id)

    @property
    def backend(self) -> ResultBackend:
        return self._backend or self.app.backend

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> Any:
        return AsyncResult, (self.id, None, self.name, None, self.parent)

    def as_tuple(self) -> tuple:
        parent = self.parent
        return (self.id, parent and parent.as_tuple()), None

    # -- meta ----------------------------------------------------------------------------

    def _get_meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        return self._keep(self.backend.get_task_meta(self.id))

    async def _aget_meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        return self._keep(await self.backend.aget_task_meta(self.id))

    def _keep(self, meta: dict[str, Any]) -> dict[str, Any]:
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        """The task's state: PENDING, STARTED, RETRY, FAILURE, SUCCESS, or a custom one."""
        return self._get_meta()["status"]

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception when the task failed (no exception raised)."""
        return self._get_meta()["result"]

    info = result

    @property
    def traceback(self) -> str | None:
        return self._get_meta().get("traceback")

    @property
    def date_done(self) -> Any:
        return self._get_meta().get("date_done")

    @property
    def children(self) -> list[Any]:
        return self._get_meta().get("children") or []

    @property
    def args(self) -> Any:
        return self._get_meta().get("args")

    @property
    def kwargs(self) -> Any:
        return self._get_meta().get("kwargs")

    @property
    def worker(self) -> Any:
        return self._get_meta().get("worker")

    @property
    def queue(self) -> Any:
        return self._get_meta().get("queue")

    @property
    def retries(self) -> Any:
        return self._get_meta().get("retries")

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # -- waiting -------------------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            no_ack: bool = True, follow_parents: bool = True, callback: Any = None,
            on_message: Any = None, on_interval: Any = None, disable_sync_subtasks: bool = True,
            **kwargs: Any) -> Any:
        """Wait for the task to finish and return its value.

        Args:
            timeout: seconds to wait; raises ``celery.exceptions.TimeoutError`` after.
            propagate: re-raise the task's exception when it failed.
            interval: accepted for compatibility; waiting is push-based, not polling.
            disable_sync_subtasks: refuse to wait from inside a running task.
        """
        if disable_sync_subtasks:
            self._check_not_in_task()
        # (wait_for confirms this process's publishes before it blocks: a message Redis
        # refused raises there, not a timeout)
        meta = self._cache or self._keep(self.backend.wait_for(self.id, timeout))
        return self._outcome(meta, propagate, callback)

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   callback: Any = None, **kwargs: Any) -> Any:
        """Wait on the running event loop for the task to finish and return its value."""
        if self._cache is None:
            self.app._confirm_published()
        meta = self._cache or self._keep(await self.backend.await_ready(self.id, timeout))
        return self._outcome(meta, propagate, callback)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.aget().__await__()

    def _outcome(self, meta: dict[str, Any], propagate: bool, callback: Any) -> Any:
        value = meta["result"]
        if callback is not None:
            callback(self.id, value)
        if propagate and meta["status"] in states.PROPAGATE_STATES:
            if isinstance(value, BaseException):
                raise value.with_traceback(None)
            from .exceptions import TaskRevokedError

            raise TaskRevokedError(self.id) if meta["status"] == states.REVOKED else Exception(value)
        return value

    @staticmethod
    def _check_not_in_task() -> None:
        task = current_task_var.get()
        if task is not None and not task.request.is_eager:
            raise RuntimeError(_SYNC_SUBTASK_ERROR)

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None) -> Any:
        """Revoke this task on every worker (``app.control.revoke``): it never starts, and
        with ``terminate`` a running one is stopped. ``wait`` collects the workers' replies
        for ``timeout`` seconds (1 s by default)."""
        return self.app.control.revoke(self.id, terminate=terminate, signal=signal,
                                       reply=wait, timeout=timeout or 1.0)

    async def arevoke(self, terminate: bool = False, signal: str | None = None,
                      wait: bool = False, timeout: float | None = None) -> Any:
        return await self.app.control.arevoke(self.id, terminate=terminate, signal=signal,
                                              reply=wait, timeout=timeout or 1.0)

    def forget(self) -> None:
        """Remove the stored result."""
        self._cache = None
        self.backend.forget(self.id)

    async def aforget(self) -> None:
        self._cache = None
        await self.backend.aforget(self.id)


class EagerResult(AsyncResult):
    """The result of a task run in this process (``apply()`` or ``task_always_eager``)."""

    def __init__(self, id: str, ret_value: Any, state: str, traceback: str | None = None,
                 name: str | None = None, app: Celery | None = None) -> None:
        super().__init__(id, task_name=name, app=app)
        self._cache = {"status": state, "result": ret_value, "traceback": traceback,
                       "children": [], "date_done": None, "task_id": id}

    def _get_meta(self) -> dict[str, Any]:
        return self._cache  # type: ignore[return-value]

    async def _aget_meta(self) -> dict[str, Any]:
        return self._cache  # type: ignore[return-value]

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            no_ack: bool = True, follow_parents: bool = True, callback: Any = None,
            on_message: Any = None, on_interval: Any = None, disable_sync_subtasks: bool = True,
            **kwargs: Any) -> Any:
        return self._outcome(self._cache, propagate, callback)  # type: ignore[arg-type]

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   callback: Any = None, **kwargs: Any) -> Any:
        return self._outcome(self._cache, propagate, callback)  # type: ignore[arg-type]

    def forget(self) -> None:
        return None

    async def aforget(self) -> None:
        return None
