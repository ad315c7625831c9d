"""Many results handled as one: ResultSet, GroupResult (a group's), and their tuples.

``join()`` reads the ready ones in batches (one round trip each) and waits only for those
that are not there yet (``JoinPlan``), pushed by the backend as for one result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .. import states
from .._state import get_current_app
from ..exceptions import TimeoutError
from .one import AsyncResult, ResultBase, check_join_allowed

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..backends.base import ResultBackend

__all__ = ["GroupResult", "JoinPlan", "ResultSet", "result_from_tuple"]


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
            check_join_allowed()
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
