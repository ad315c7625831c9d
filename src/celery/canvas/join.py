"""The chord join: a header member reports, and the last one sends the body.

Written once as a duty (``canvas/effects.py``) over the backend's storage
(``backends/groups.py``): the finished member records its ``[1, id, state, result]``;
the one that completes the header (and claims the chord) gets every part back in header
order and sends the body with the list of results. If a member failed, the body is not run:
it fails with ``ChordError("Dependency <id> raised <exc>")``, its errbacks are called and
the rest of its chain fails too, as in Celery. A header that nests groups was saved by the
sender (``GroupResult.save``); its shape is rebuilt from the parts, nested lists and all,
without waiting for any stored result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import states
from .._state import Context
from ..exceptions import ChordError, ConnectionLost
from .effects import ChordDone, ChordReport, Duty, GroupMeta, Send, Store
from .signatures import maybe_signature

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["chord_error", "report_to_chord"]

logger = logging.getLogger("celery.canvas.join")


def report_to_chord(app: Celery, request: Any, state: str, result: Any) -> Duty[None]:
    """A member of a chord's header (``request.chord`` set) ended in ``state``.

    Raises:
        ConnectionLost: the report did not reach the backend (made again, it counts once).
    """
    backend = app.backend
    group_id, task_id = getattr(request, "group", None), getattr(request, "id", None)
    if not group_id or not task_id or not backend.supports_chord_join:
        return  # no group to report to; or celery.chord_unlock polls for this backend
    try:
        part = yield ChordReport(group_id, task_id, getattr(request, "group_index", None),
                                 backend.encode_chord_part(task_id, state, result))
    except ConnectionLost:
        raise  # the report is made again (it counts once): the caller retries
    except Exception as exc:
        logger.error("Task %s: could not report to its chord %s: %r", task_id, group_id, exc)
        return
    if not part.claimed:
        return
    try:
        body = maybe_signature(request.chord, app=app)
    except Exception as exc:  # InvalidSignature, or absurd nesting
        logger.error("Chord %s completed by %s: its body is malformed, not sent: %r",
                     group_id, task_id, exc)
        yield from _done(group_id, part.token)
        return
    try:
        values = yield from _header_values(app, group_id, part.parts)
    except ChordError as exc:
        logger.error("Chord %s failed: %s", group_id, exc)
        yield from chord_error(app, body, exc)
    except Exception as exc:
        logger.error("Chord %s: the join failed: %r", group_id, exc)
        yield from chord_error(app, body, ChordError(f"Join error: {exc!r}"))
    else:
        try:
            yield Send(body, (values,))
        except Exception as exc:
            logger.error("Chord %s: its body could not be sent: %r", group_id, exc)
            yield from chord_error(app, body, _chord_error(f"Callback error: {exc!r}", exc))
    yield from _done(group_id, part.token)


def _done(group_id: str, token: str | None) -> Duty[None]:
    if token is None:
        return
    try:
        yield ChordDone(group_id, token)
    except Exception as exc:  # the keys expire anyway; a late duplicate may slip through
        logger.warning("Chord %s: could not mark it done: %r", group_id, exc)


def _chord_error(message: str, cause: BaseException | None) -> ChordError:
    error = ChordError(message)
    if isinstance(cause, Exception):
        error.__cause__ = cause
    return error


def _header_values(app: Celery, group_id: str, parts: Iterable[bytes]) -> Duty[list[Any]]:
    """The header's results in order (nested as the header was, if it was saved), or
    ChordError naming the first member that failed."""
    backend = app.backend
    by_id: dict[str, Any] = {}
    ordered = []
    for raw in parts:
        task_id, state, value = backend.decode_chord_part(raw)
        if state in states.PROPAGATE_STATES:
            raise _chord_error(f"Dependency {task_id} raised {value!r}", value)
        by_id[task_id] = value
        ordered.append(value)
    saved = yield GroupMeta(group_id)
    if saved is None:
        return ordered
    members = saved["result"][1] if isinstance(saved.get("result"), list | tuple) else None
    if not members:
        return ordered
    return [_shaped(member, by_id) for member in members]


def _shaped(node: Any, by_id: dict[str, Any]) -> Any:
    """A member of a saved group's ``as_tuple()``: a task's value, or a list for a group."""
    (node_id, _), children = node
    if children is not None:
        return [_shaped(child, by_id) for child in children]
    try:
        return by_id[node_id]
    except KeyError:
        raise ChordError(f"Dependency {node_id} never reported to the chord") from None


def request_of(sig: Any) -> Any:
    """A request for a signature that never ran (a chord's body, a chain's later step), as
    its options describe it: what failing it, its errbacks and its chord need."""
    options = sig.options
    return Context(id=options.get("task_id"), task=sig.task, args=sig.args, kwargs=sig.kwargs,
                   group=options.get("group_id"), group_index=options.get("group_index"),
                   chord=options.get("chord"), chain=options.get("chain"),
                   root_id=options.get("root_id"), parent_id=options.get("parent_id"),
                   errbacks=options.get("link_error") or [], callbacks=options.get("link"),
                   delivery_info={}, subtask_type=sig.subtask_type)


def chord_error(app: Celery, body: Any, exc: Exception) -> Duty[None]:
    """The chord's body will not run: fail it (every member of a group body), call its
    errbacks, fail the rest of its chain, and report it to the chord it belongs to."""
    from .followups import call_errbacks, fail_chain
    from .groups import group

    targets = [maybe_signature(t, app=app) for t in body.tasks] if isinstance(body, group) \
        else [body]
    for target in targets:
        if target.id is None:
            target.freeze()
        request = request_of(target)
        yield from call_errbacks(app, request, exc, None)
        try:
            yield Store(request.id, states.FAILURE, exc, None, request)
        except Exception as store_error:
            logger.error("Could not store the failure of %s[%s]: %r", target.task, request.id,
                         store_error)
        if request.chord:
            yield from report_to_chord(app, request, states.FAILURE, exc)
    yield from fail_chain(app, body.options.get("chain"), exc, None)
