"""Results: AsyncResult (one task), ResultSet and GroupResult (several), sync and awaitable.

Waiting never polls: backends wake waiters when a result is stored (pub/sub on Redis).
``join()`` of many results reads the ready ones in batches (one round trip each) and waits
only for those that are not there yet (``JoinPlan``).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import states
from ._state import current_task_var, get_current_app, join_allowed
from .exceptions import IncompleteStream, TimeoutError

if TYPE_CHECKING:
    from .app.base import Celery
    from .backends.base import ResultBackend

__all__ = ["AsyncResult", "EagerResult", "GroupResult", "ResultBase", "ResultSet",
           "allow_join_result", "denied_join_result", "result_from_tuple"]

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


def _check_join_allowed() -> None:
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
            _check_join_allowed()
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
            from .exceptions import TaskRevokedError

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


class JoinPlan:
    """Waiting for many results in order, with few round trips (pure: the caller does the
    reads and waits, blocking or on a loop).

    ``reads()`` gives the ids to read now (one batch read): the next ``batch`` of those not
    known to be ready, from the first one not done; ``absorb`` takes what was read. Then
    ``wait_for()`` names the first not ready (to wait for, pushed by the backend), or None
    when every result is in. The batch grows while what was read was ready, and shrinks to
    what was, so waiting on results as they come does not reread hundreds each time.
    """

    def __init__(self, results: Sequence[AsyncResult], timeout: float | None) -> None:
        self.ids = [r.id for r in results]
        #: Ready metas by id: those the results hold already (cached, or eager), then read.
        self.metas: dict[str, dict[str, Any]] = {r.id: r._cache for r in results
                                                 if r._cache is not None}
        self.position = 0
        self.batch = 16
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left of the timeout (TimeoutError once spent); None: no timeout."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("The operation timed out.")
        return left

    def reads(self) -> list[str]:
        self._advance()
        pending = [i for i in self.ids[self.position:] if i not in self.metas]
        return list(dict.fromkeys(pending[:self.batch]))

    def absorb(self, metas: dict[str, dict[str, Any]]) -> None:
        ready = 0
        for task_id, meta in metas.items():
            if meta.get("status") in states.READY_STATES:
                self.metas[task_id] = meta
                ready += 1
        self.batch = min(1024, self.batch * 2) if ready == len(metas) else max(16, ready * 2)

    def took(self, task_id: str, meta: dict[str, Any]) -> None:
        self.metas[task_id] = meta

    def wait_for(self) -> str | None:
        self._advance()
        return self.ids[self.position] if self.position < len(self.ids) else None

    def _advance(self) -> None:
        while self.position < len(self.ids) and self.ids[self.position] in self.metas:
            self.position += 1


class ResultSet(ResultBase):
    """Several results handled as one: ``join()`` their values in order, ``ready()``,
    ``completed_count()``, ``revoke()``... Reads of many states take one batch read."""

    def __init__(self, results: Iterable[Any], app: Celery | None = None, **kwargs: Any) -> None:
        self._app = app
        self.results: list[Any] = list(results)

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = self.results[0].app if self.results else get_current_app()
        return self._app

    @app.setter
    def app(self, app: Celery) -> None:
        self._app = app

    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    @property
    def supports_native_join(self) -> bool:
        return True

    # -- membership ---------------------------------------------------------------------------

    def add(self, result: Any) -> None:
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: Any) -> None:
        if isinstance(result, str):
            result = self.app.AsyncResult(result)
        try:
            self.results.remove(result)
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: Any) -> None:
        with contextlib.suppress(KeyError):
            self.remove(result)

    def update(self, results: Iterable[Any]) -> None:
        self.results.extend(r for r in results if r not in self.results)

    def clear(self) -> None:
        self.results[:] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Any:
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    def __hash__(self) -> int:  # members change; hashing by identity, as object does
        return id(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(str(r.id) for r in self.results)}]>"

    # -- states, read in one batch ---------------------------------------------------------------

    def _leaves(self) -> list[AsyncResult]:
        out: list[AsyncResult] = []
        for result in self.results:
            out.extend(result._leaves() if isinstance(result, ResultSet) else [result])
        return out

    def _metas(self) -> list[tuple[AsyncResult, dict[str, Any]]]:
        """Every leaf result with its meta, those not known to be ready read in one batch."""
        leaves = self._leaves()
        missing = [r.id for r in leaves if r._cache is None]
        read = self.backend.get_many_meta(missing) if missing else {}
        return [(r, r._cache or r._keep(read[r.id])) for r in leaves]

    async def _ametas(self) -> list[tuple[AsyncResult, dict[str, Any]]]:
        leaves = self._leaves()
        missing = [r.id for r in leaves if r._cache is None]
        read = await self.backend.aget_many_meta(missing) if missing else {}
        return [(r, r._cache or r._keep(read[r.id])) for r in leaves]

    def _states(self) -> list[str]:
        return [meta["status"] for _, meta in self._metas()]

    def ready(self) -> bool:
        return all(s in states.READY_STATES for s in self._states())

    def waiting(self) -> bool:
        return not self.ready()

    def successful(self) -> bool:
        return all(s == states.SUCCESS for s in self._states())

    def failed(self) -> bool:
        return any(s == states.FAILURE for s in self._states())

    def completed_count(self) -> int:
        """How many have succeeded."""
        return sum(s == states.SUCCESS for s in self._states())

    def maybe_throw(self, callback: Any = None, propagate: bool = True) -> None:
        """Raise the first failure among the members, in order (one batch read)."""
        for result, meta in self._metas():
            result._maybe_throw_meta(meta, propagate, callback)

    maybe_reraise = maybe_throw

    async def amaybe_throw(self, callback: Any = None, propagate: bool = True) -> None:
        for result, meta in await self._ametas():
            result._maybe_throw_meta(meta, propagate, callback)

    def forget(self) -> None:
        for result in self.results:
            result.forget()

    def revoke(self, connection: Any = None, terminate: bool = False, signal: str | None = None,
               wait: bool = False, timeout: float | None = None) -> Any:
        """Revoke every task of the set (one broadcast)."""
        return self.app.control.revoke([r.id for r in self._leaves()], terminate=terminate,
                                       signal=signal, reply=wait, timeout=timeout or 1.0)

    # -- joining ----------------------------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            callback: Any = None, no_ack: bool = True, on_message: Any = None,
            disable_sync_subtasks: bool = True, on_interval: Any = None) -> Any:
        """``join()``: every value, in order."""
        return self.join(timeout=timeout, propagate=propagate, callback=callback,
                         disable_sync_subtasks=disable_sync_subtasks)

    def join(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
             callback: Callable[[str, Any], Any] | None = None, no_ack: bool = True,
             on_message: Any = None, disable_sync_subtasks: bool = True,
             on_interval: Any = None) -> list[Any]:
        """Wait for every result and return their values in order (a nested GroupResult's
        as a list). With ``callback``, it is called with ``(task id, value)`` of each,
        in order, and the list is empty. ``timeout`` is for the whole set.

        Raises:
            The first failed task's exception in order (``propagate``).
            celery.exceptions.TimeoutError: not all done within ``timeout`` seconds.
        """
        if disable_sync_subtasks:
            _check_join_allowed()
        leaves = self._leaves()
        plan = JoinPlan(leaves, timeout)
        backend = self.backend
        while True:
            ids = plan.reads()
            if ids:
                plan.absorb(backend.get_many_meta(ids))
            waiting = plan.wait_for()
            if waiting is None:
                break
            plan.took(waiting, backend.wait_for(waiting, plan.remaining()))
        return self._values(leaves, plan.metas, propagate, callback)

    join_native = join

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   callback: Any = None, **kwargs: Any) -> list[Any]:
        return await self.ajoin(timeout=timeout, propagate=propagate, callback=callback)

    async def ajoin(self, timeout: float | None = None, propagate: bool = True,
                    callback: Callable[[str, Any], Any] | None = None) -> list[Any]:
        """``join()`` on the running event loop (never blocks it)."""
        leaves = self._leaves()
        plan = JoinPlan(leaves, timeout)
        backend = self.backend
        self.app._confirm_published()
        while True:
            ids = plan.reads()
            if ids:
                plan.absorb(await backend.aget_many_meta(ids))
            waiting = plan.wait_for()
            if waiting is None:
                break
            plan.took(waiting, await backend.await_ready(waiting, plan.remaining()))
        return self._values(leaves, plan.metas, propagate, callback)

    def __await__(self) -> Generator[Any, None, list[Any]]:
        return self.ajoin().__await__()

    def _values(self, leaves: list[AsyncResult], metas: dict[str, dict[str, Any]],
                propagate: bool, callback: Callable[[str, Any], Any] | None) -> list[Any]:
        """The values in the set's shape (nested sets as lists), failures raised in order;
        with ``callback`` each value goes there instead and the list is empty."""
        values = []
        for result in self.results:
            if isinstance(result, ResultSet):
                value: Any = result._values(result._leaves(), metas, propagate, None)
            else:
                value = self._value(result, metas, propagate, callback)
            if callback is None:
                values.append(value)
        return values

    @staticmethod
    def _value(result: AsyncResult, metas: dict[str, dict[str, Any]], propagate: bool,
               callback: Callable[[str, Any], Any] | None) -> Any:
        meta = result._cache or result._keep(metas[result.id])
        return result._outcome(meta, propagate, callback)


class GroupResult(ResultSet):
    """The result of a group: its id and its members' results (Celery's GroupResult).

    ``save()``/``GroupResult.restore(id)`` keep it in the result backend (Celery's key
    ``celery-taskset-meta-<id>``), so another process can join it.
    """

    #: The app of ``app.GroupResult`` (a subclass bound to it); None here.
    default_app: Celery | None = None

    def __init__(self, id: str | None = None, results: Iterable[Any] | None = None,
                 parent: Any = None, app: Celery | None = None, **kwargs: Any) -> None:
        self.id = id
        self.parent = parent
        super().__init__(results or [], app=app or self.default_app)

    def save(self, backend: ResultBackend | None = None) -> GroupResult:
        """Store it (blocking) so that ``GroupResult.restore(id)`` finds it."""
        (backend or self.backend).save_group(str(self.id), self)
        return self

    async def asave(self, backend: ResultBackend | None = None) -> GroupResult:
        await (backend or self.backend).asave_group(str(self.id), self)
        return self

    def delete(self, backend: ResultBackend | None = None) -> None:
        (backend or self.backend).delete_group(str(self.id))

    async def adelete(self, backend: ResultBackend | None = None) -> None:
        await (backend or self.backend).adelete_group(str(self.id))

    @classmethod
    def restore(cls, id: str, backend: ResultBackend | None = None,
                app: Celery | None = None) -> GroupResult | None:
        """The group saved under ``id``, or None (blocking)."""
        app = app or cls.default_app or get_current_app()
        meta = (backend or app.backend).get_group_meta(id)
        return None if meta is None else result_from_tuple(meta["result"], app)

    @classmethod
    async def arestore(cls, id: str, backend: ResultBackend | None = None,
                       app: Celery | None = None) -> GroupResult | None:
        app = app or cls.default_app or get_current_app()
        meta = await (backend or app.backend).aget_group_meta(id)
        return None if meta is None else result_from_tuple(meta["result"], app)

    def as_tuple(self) -> tuple:
        parent = self.parent
        return (self.id, parent and parent.as_tuple()), [r.as_tuple() for r in self.results]

    @property
    def children(self) -> list[Any]:
        return self.results

    def __bool__(self) -> bool:
        return bool(self.id or self.results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return other.id == self.id and other.results == self.results and other.parent == self.parent
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id} [{', '.join(str(r.id) for r in self.results)}]>"

    def __str__(self) -> str:
        return str(self.id)

    def __reduce__(self) -> Any:
        return GroupResult, (self.id, self.results, self.parent)


def result_from_tuple(r: Any, app: Celery | None = None) -> Any:
    """A result object from its ``as_tuple()`` form (``((id, parent), None)`` for a task,
    ``((id, parent), [members])`` for a group); a result object is returned as it is."""
    if isinstance(r, ResultBase):
        return r
    app = app or get_current_app()
    res, nodes = r
    task_id, parent = res if isinstance(res, list | tuple) else (res, None)
    if parent:
        parent = result_from_tuple(parent, app)
    if nodes is not None:
        return GroupResult(task_id, [result_from_tuple(child, app) for child in nodes],
                           parent=parent, app=app)
    return AsyncResult(task_id, app=app, parent=parent)
