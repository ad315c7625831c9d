"""The tasks every app has, as Celery names them: what canvas messages run on a worker.

``celery.chord_unlock`` joins a chord for backends without a join of their own (it polls
the header's results, retrying itself every ``result_chord_retry_interval``);
``celery.map``/``celery.starmap``/``celery.chunks`` apply a task to many items in one
message; ``celery.accumulate`` hands back its arguments (``Task.replace`` with a group);
``celery.group``/``celery.chain``/``celery.chord`` run a canvas sent as a task;
``celery.backend_cleanup`` deletes expired results. They are ``def`` tasks, run by sync
workers; an ``async def`` task given to map/starmap runs on a loop of that thread's own.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from .. import _state

if TYPE_CHECKING:
    from .base import Celery

__all__ = ["BUILTIN_PREFIX", "add_builtins"]

logger = logging.getLogger("celery.app.builtins")

#: Names of built-in tasks start with this (``inspect registered`` leaves them out).
BUILTIN_PREFIX = "celery."


def add_builtins(app: Celery) -> None:
    """Register the built-in tasks with ``app`` (every app, when it is created)."""
    _backend_cleanup(app)
    _accumulate(app)
    _chord_unlock(app)
    _map_tasks(app)
    _canvas_tasks(app)


def _backend_cleanup(app: Celery) -> None:
    @app.task(name="celery.backend_cleanup", ignore_result=True)
    def backend_cleanup() -> Any:
        cleanup = getattr(app.backend, "cleanup", None)
        if cleanup is None:
            logger.info("celery.backend_cleanup: %s keeps no expired results to delete",
                        type(app.backend).__name__)
            return None
        return cleanup()


def _accumulate(app: Celery) -> None:
    @app.task(name="celery.accumulate", bind=True)
    def accumulate(self: Any, *args: Any, **kwargs: Any) -> Any:
        index = kwargs.get("index")
        return args[index] if index is not None else args


def _chord_unlock(app: Celery) -> None:
    @app.task(name="celery.chord_unlock", bind=True, max_retries=None, ignore_result=True)
    def unlock_chord(self: Any, group_id: str, callback: Any, interval: float | None = None,
                     max_retries: int | None = None, result: Any = None, **kwargs: Any) -> None:
        from ..canvas.effects import drive
        from ..canvas.join import chord_error
        from ..canvas.signatures import maybe_signature
        from ..exceptions import ChordError
        from ..result import GroupResult, allow_join_result, result_from_tuple

        if interval is None:
            interval = float(app.conf.result_chord_retry_interval)
        members = GroupResult(group_id, [result_from_tuple(r, app) for r in result or ()], app=app)
        body = maybe_signature(callback, app=app)
        if not members.ready():
            raise self.retry(countdown=interval, max_retries=max_retries)
        try:
            with allow_join_result():
                values = members.join(timeout=app.conf.result_chord_join_timeout, propagate=True)
        except Exception as exc:
            culprit = next((r for r in members if r.failed()), None)
            reason = f"Dependency {culprit.id} raised {exc!r}" if culprit else repr(exc)
            logger.error("Chord %s failed: %s", group_id, reason)
            error = ChordError(reason)
            error.__cause__ = exc
            drive(chord_error(app, body, error), app)
            return
        try:
            body.delay(values)
        except Exception as exc:
            logger.error("Chord %s: its body could not be sent: %r", group_id, exc)
            drive(chord_error(app, body, ChordError(f"Callback error: {exc!r}")), app)


def _apply_each(app: Celery, task_sig: Any, items: Any, star: bool) -> list[Any]:
    from ..canvas.effects import run_awaitable
    from ..canvas.signatures import signature

    task = signature(task_sig, app=app).type
    values = [task(*item) if star else task(item) for item in items]
    if any(inspect.isawaitable(v) for v in values):

        async def gather() -> list[Any]:
            return [await v if inspect.isawaitable(v) else v for v in values]

        values = run_awaitable(gather(), app)
    return values


def _map_tasks(app: Celery) -> None:
    @app.task(name="celery.map")
    def xmap(task: Any, it: Any) -> list[Any]:
        return _apply_each(app, task, it, star=False)

    @app.task(name="celery.starmap")
    def xstarmap(task: Any, it: Any) -> list[Any]:
        return _apply_each(app, task, it, star=True)

    @app.task(name="celery.chunks")
    def chunks(task: Any, it: Any, n: int) -> Any:
        from ..canvas.maps import chunks as _chunks

        return _chunks(task, it, n, app=app).apply_async()


def _canvas_tasks(app: Celery) -> None:
    @app.task(name="celery.group", bind=True)
    def group(self: Any, tasks: Any, result: Any, group_id: str, partial_args: Any,
              add_to_parent: bool = True) -> Any:
        from ..canvas.groups import group as _group
        from ..canvas.signatures import maybe_signature

        members = [maybe_signature(t, app=app).clone(partial_args) for t in tasks]
        return _group(members, app=app).apply_async(task_id=group_id,
                                                     add_to_parent=add_to_parent).as_tuple()

    @app.task(name="celery.chain")
    def chain(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("chain is not a real task")

    @app.task(name="celery.chord", bind=True, ignore_result=False)
    def chord(self: Any, header: Any, body: Any, partial_args: Any = (), interval: Any = None,
              countdown: Any = 1, max_retries: Any = None, eager: bool = False,
              **kwargs: Any) -> Any:
        from ..canvas.chords import chord as _chord
        from ..canvas.signatures import maybe_signature

        tasks = header.get("kwargs", {}).get("tasks", header) if isinstance(header, dict) else header
        sig = _chord([maybe_signature(t, app=app) for t in tasks], maybe_signature(body, app=app),
                     app=app)
        return sig.apply_async(partial_args, kwargs).as_tuple()


_state.connect_on_app_finalize(add_builtins)
