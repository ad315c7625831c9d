"""AsyncResult: one task's state and return value, sync and awaitable; when waiting for
results is allowed inside a task.

Waiting never polls: backends wake waiters when a result is stored (pub/sub on Redis).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from .. import states
from .._state import current_task_var, get_current_app, join_allowed
from ..exceptions import IncompleteStream

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..backends.base import ResultBackend

__all__ = ["AsyncResult", "EagerResult", "ResultBase", "allow_join_result",
           "check_join_allowed", "denied_join_result"]

_SYNC_SUBTASK_ERROR = (
    "Never call result.get() within a task: waiting for another task from inside a task can "
    "deadlock the worker. Use a callback (link=...) or a chord; in an async task, await the "
    "result; or, knowing the risk, wrap the call in celery.result.allow_join_result()."
)


@contextlib.contextmanager
def allow_join_result() -> Iterator[None]:
    """Let the code inside wait for results even within a running task (Celery's escape
    hatch; the worker's chord join uses it). Per thread and per asyncio task."""
    token = join_allowed.set(True)
    try:
        yield
    finally:
        join_allowed.reset(token)


@contextlib.contextmanager
def denied_join_result() -> Iterator[None]:
    """Undo ``allow_join_result`` for the code inside."""
    token = join_allowed.set(False)
    try:
        yield
    finally:
        join_allowed.reset(token)


def check_join_allowed() -> None:
    """Raise Celery's RuntimeError when waiting from inside a task (not eager) is refused."""
    task = current_task_var.get()
    if task is not None and not task.request.is_eager and not join_allowed.get():
        raise RuntimeError(_SYNC_SUBTASK_ERROR)


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

    def as_list(self) -> list[str]:
        """This id, then its parents' ids."""
        out, node = [], self
        while node is not None:
            out.append(node.id)
            node = node.parent
        return out

    def __str__(self) -> str:
        return self.id

    def __copy__(self) -> AsyncResult:
        return type(self)(self.id, self._backend, self.name, self.app, self.parent)

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

    async def astate(self) -> str:
        """``state`` for the running event loop: reads the result store without blocking it.
        A ready state is kept, so ``result``, ``traceback``, ... then read nothing more."""
        return (await self._aget_meta())["status"]

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
        """The results of the tasks this one sent (and of groups it sent), as result
        objects; empty until it is done."""
        from .many import result_from_tuple

        return [result_from_tuple(child, self.app) for child in self._get_meta().get("children") or ()]

    @property
    def supports_native_join(self) -> bool:
        return True

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
            check_join_allowed()
        if propagate and follow_parents and self.parent is not None:
            self._reraise_parent_error()
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
        if propagate and self.parent is not None and kwargs.get("follow_parents", True):
            for node in reversed(list(self._parents())):
                await node.amaybe_throw()
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
            from ..exceptions import TaskRevokedError

            raise TaskRevokedError(self.id) if meta["status"] == states.REVOKED else Exception(value)
        return value

    def _parents(self) -> Iterator[AsyncResult]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def _reraise_parent_error(self) -> None:
        """A chain's step failed: raise its error now, first step first (Celery's
        ``follow_parents``), rather than wait for a step that will never run."""
        for node in reversed(list(self._parents())):
            node.maybe_throw()

    def maybe_throw(self, propagate: bool = True, callback: Any = None) -> Any:
        """Raise the task's exception if it failed (and ``propagate``); its value otherwise
        (None while it is not done)."""
        meta = self._cache if self._cache is not None else self._get_meta()
        return self._maybe_throw_meta(meta, propagate, callback)

    maybe_reraise = maybe_throw

    async def amaybe_throw(self, propagate: bool = True, callback: Any = None) -> Any:
        """``maybe_throw`` on the running event loop."""
        meta = self._cache if self._cache is not None else await self._aget_meta()
        return self._maybe_throw_meta(meta, propagate, callback)

    def _maybe_throw_meta(self, meta: dict[str, Any], propagate: bool = True,
                          callback: Any = None) -> Any:
        if meta.get("status") in states.PROPAGATE_STATES and propagate:
            return self._outcome(meta, True, None)
        if callback is not None:
            callback(self.id, meta.get("result"))
        return meta.get("result")

    def collect(self, intermediate: bool = False, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
        """``(result, value)`` for this task and every task it sent, depth first (the
        tasks must be done unless ``intermediate``); ``kwargs`` go to ``get()``."""
        for _, node in self.iterdeps(intermediate=intermediate):
            yield node, node.get(**kwargs)

    def get_leaf(self) -> Any:
        """The value of the last result of ``iterdeps`` (a chain of children's end)."""
        value = None
        for _, node in self.iterdeps():
            value = node.get()
        return value

    def iterdeps(self, intermediate: bool = False) -> Iterator[tuple[Any, Any]]:
        """``(parent, result)`` pairs through the children, breadth first.

        Raises:
            IncompleteStream: a result is not ready (unless ``intermediate``).
        """
        stack: deque[tuple[Any, Any]] = deque([(None, self)])
        while stack:
            parent, node = stack.popleft()
            yield parent, node
            if node.ready():
                stack.extend((node, child) for child in node.children or ())
            elif not intermediate:
                raise IncompleteStream()

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
