"""Effects: the I/O of the canvas's duties, as data, run by a blocking or an async driver.

What a finished task triggers (its callbacks, the next step of its chain, its chord's join,
its errbacks: ``canvas/followups.py``, ``canvas/join.py``) is written once, as a generator
that yields effects (send this, store that, report to that chord) and receives their
outcomes. ``drive`` runs one on the calling thread, blocking (a sync worker thread);
``adrive`` awaits each effect on the running loop (a loop worker, or the consumer's), so
that the logic is the same for ``def`` and ``async def`` tasks. An effect that raises has
its exception thrown back into the generator at that ``yield``.

``eager`` (``Task.apply``): sends run the signature here and now instead.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["Call", "ChordDone", "ChordReport", "Effect", "GroupMeta", "Send", "Store",
           "TaskState", "adrive", "drive", "run_awaitable"]

T = TypeVar("T")
Duty = Generator["Effect", Any, T]


class Effect:
    """One piece of I/O: ``run`` (blocking, any thread) or ``arun`` (on a loop)."""

    def run(self, app: Celery, eager: bool) -> Any:
        raise NotImplementedError

    async def arun(self, app: Celery) -> Any:
        raise NotImplementedError


@dataclass(slots=True)
class Send(Effect):
    """Apply a signature (a task or a whole canvas) with these partial arguments."""

    sig: Any
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def run(self, app: Celery, eager: bool) -> Any:
        if eager:
            return self.sig.apply(self.args, self.kwargs, **self.options)
        result = self.sig.apply_async(self.args, self.kwargs, **self.options)
        # A pipelined publish (Redis) is confirmed now, so a refused one fails here.
        app._confirm_own_published()
        return result

    async def arun(self, app: Celery) -> Any:
        return await self.sig.aapply_async(self.args, self.kwargs, **self.options)


@dataclass(slots=True)
class Store(Effect):
    """Store a state for a task id (a chain's later step, a chord's body, failed)."""

    task_id: str
    state: str
    value: Any
    traceback: str | None = None
    request: Any = None

    def run(self, app: Celery, eager: bool) -> Any:
        app.backend.store_result(self.task_id, self.value, self.state, self.traceback,
                                 self.request)

    async def arun(self, app: Celery) -> Any:
        await app.backend.astore_result(self.task_id, self.value, self.state, self.traceback,
                                        self.request)


@dataclass(slots=True)
class TaskState(Effect):
    """The stored state of a task id."""

    task_id: str

    def run(self, app: Celery, eager: bool) -> Any:
        return app.backend.get_task_meta(self.task_id)["status"]

    async def arun(self, app: Celery) -> Any:
        return (await app.backend.aget_task_meta(self.task_id))["status"]


@dataclass(slots=True)
class ChordReport(Effect):
    """A header member is done: record it; the backend's ``ChordPart`` comes back."""

    group_id: str
    task_id: str
    index: int | None
    part: bytes

    def run(self, app: Celery, eager: bool) -> Any:
        return app.backend.chord_part(self.group_id, self.task_id, self.index, self.part)

    async def arun(self, app: Celery) -> Any:
        return await app.backend.achord_part(self.group_id, self.task_id, self.index, self.part)


@dataclass(slots=True)
class ChordDone(Effect):
    """The claimed chord was handled: the backend drops its keys."""

    group_id: str
    token: str

    def run(self, app: Celery, eager: bool) -> Any:
        app.backend.chord_done(self.group_id, self.token)

    async def arun(self, app: Celery) -> Any:
        await app.backend.achord_done(self.group_id, self.token)


@dataclass(slots=True)
class GroupMeta(Effect):
    """The saved group of this id (its decoded meta), or None."""

    group_id: str

    def run(self, app: Celery, eager: bool) -> Any:
        return app.backend.get_group_meta(self.group_id)

    async def arun(self, app: Celery) -> Any:
        return await app.backend.aget_group_meta(self.group_id)


@dataclass(slots=True)
class Call(Effect):
    """Call user code (an errback's function, a task handler) with these arguments.

    Blocking: called on this thread, and a coroutine it returns is run to its end here
    (``run_awaitable``). On a loop: a coroutine function is awaited there; any other
    function runs on a thread of the default executor, so that it never blocks the loop.
    """

    fn: Callable[..., Any]
    args: Sequence[Any] = ()
    is_async: bool = False

    def run(self, app: Celery, eager: bool) -> Any:
        value = self.fn(*self.args)
        return run_awaitable(value, app) if inspect.isawaitable(value) else value

    async def arun(self, app: Celery) -> Any:
        if self.is_async:
            value = self.fn(*self.args)
            return await value if inspect.isawaitable(value) else value
        value = await asyncio.to_thread(self.fn, *self.args)
        return await value if inspect.isawaitable(value) else value


async def _awaited(value: Any) -> Any:
    return await value


def run_awaitable(value: Any, app: Celery) -> Any:
    """Run an awaitable (an ``async def`` task's coroutine) to its end from sync code.

    On a thread with no running loop (a sync worker thread) it gets a loop of its own here,
    so that the coroutine may itself call the app's blocking API (which goes through the
    portal loop); from inside a running loop it goes to the portal loop instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(value))
    return app.portal.call(_awaited(value))


class _Run:
    """Steps a duty: the next effect it wants, or None once it returned (``result``)."""

    def __init__(self, duty: Duty[Any]) -> None:
        self.duty = duty
        self.result: Any = None

    def next(self, reply: Any = None, error: Exception | None = None) -> Effect | None:
        try:
            return self.duty.throw(error) if error is not None else self.duty.send(reply)
        except StopIteration as stop:
            self.result = stop.value
            return None


def drive(duty: Duty[T], app: Celery, eager: bool = False) -> T:
    """Run ``duty`` to its end on the calling thread, blocking; returns its return value."""
    run = _Run(duty)
    effect = run.next()
    while effect is not None:
        try:
            reply = effect.run(app, eager)
        except Exception as exc:
            effect = run.next(error=exc)
        else:
            effect = run.next(reply)
    return run.result  # type: ignore[no-any-return]


async def adrive(duty: Duty[T], app: Celery) -> T:
    """Run ``duty`` to its end on the running event loop (never blocking it). A
    cancellation (BaseException) is not thrown in: it goes on up, as it must."""
    run = _Run(duty)
    effect = run.next()
    while effect is not None:
        try:
            reply = await effect.arun(app)
        except Exception as exc:
            effect = run.next(error=exc)
        else:
            effect = run.next(reply)
    return run.result  # type: ignore[no-any-return]
