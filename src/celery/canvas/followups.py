"""What a finished task sets off, as Celery 5 does it (duties: ``canvas/effects.py``).

* **Success**: each ``link`` callback is applied with the return value (several callbacks
  go as one group, group callbacks each on their own), then the next step of the task's
  ``chain`` with the return value and the rest of the chain; both with the finished task
  as parent (``after_success``). A chord member then reports to its chord
  (``after_end``, canvas/join.py).
* **Failure**: the chord is told (it will fail); every later step of the chain is marked
  FAILURE with the same error, so that waiting on the chain's result raises instead of
  hanging (Celery 5.7's rule); then the errbacks: one whose function takes more than one
  argument is called here with ``(request, exc, traceback)``, the others are sent as tasks
  with the failed task's id (Celery decides by the errback's arity).
* **Revoked / expired**: only the chord is told.

A malformed canvas field (a callback that is not a signature, a chain that is not a
list) is logged with the task id; that task's follow-ups are dropped, nothing else.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import states
from ..exceptions import InvalidSignature
from .effects import Call, Duty, Send, Store, TaskState
from .join import report_to_chord, request_of
from .signatures import maybe_signature, signatures

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["after_end", "after_success", "call_errbacks", "fail_chain"]

logger = logging.getLogger("celery.canvas")


def after_success(app: Celery, request: Any, retval: Any) -> Duty[None]:
    """Send the callbacks and the chain's next step of a task that returned ``retval``.

    Raises what sending raised (the task then fails, as in Celery); a malformed callback or
    chain is only logged.
    """
    callbacks, chain = request.callbacks, request.chain
    if not callbacks and not chain:
        return
    try:
        sends = _success_sends(app, request, callbacks, chain)
    except Exception as exc:  # InvalidSignature; RecursionError for absurd nesting; ...
        logger.error("Task %s[%s]: its callbacks or chain are malformed, none sent: %r",
                     request.task, request.id, exc)
        return
    for send in sends:
        send.args = (retval,)
        yield send


def _success_sends(app: Celery, request: Any, callbacks: Any, chain: Any) -> list[Send]:
    from .groups import group

    options: dict[str, Any] = {"parent_id": request.id, "root_id": request.root_id or request.id}
    if app.conf.task_inherit_parent_priority:
        options["priority"] = (request.delivery_info or {}).get("priority")
    sends = []
    if callbacks:
        sigs = signatures(callbacks, app=app)
        if len(sigs) == 1:
            sends.append(Send(sigs[0], (), None, options))
        else:
            sends.extend(Send(g, (), None, options) for g in sigs if isinstance(g, group))
            singles = [s for s in sigs if not isinstance(s, group)]
            if singles:
                sends.append(Send(group(singles, app=app), (), None, options))
    if chain:
        if not isinstance(chain, list | tuple):
            raise InvalidSignature(f"a chain must be a list of signatures, not {type(chain).__name__}")
        steps = signatures(chain, app=app)
        sends.append(Send(steps[-1], (), None, {**options, "chain": steps[:-1]}))
    return sends


def after_end(app: Celery, request: Any, state: str, value: Any,
              traceback: str | None = None, call_errbacks_: bool = True,
              chord: bool = True) -> Duty[None]:
    """A task ended in ``state``: tell its chord (unless ``chord`` is False: a worker makes
    the report itself once the result is stored, worker/canvas.py); for a FAILURE also fail
    its chain and call its errbacks. Raises only ConnectionLost, when the chord report could
    not reach the backend; the rest of what goes wrong is logged."""
    if chord and request.chord:
        yield from report_to_chord(app, request, state, value)
    if state == states.FAILURE:
        yield from fail_chain(app, request.chain, value, traceback)
        if call_errbacks_ and request.errbacks:
            yield from call_errbacks(app, request, value, traceback)


def fail_chain(app: Celery, chain: Any, exc: Any, traceback: str | None) -> Duty[None]:
    """Mark every later step of a chain FAILURE with ``exc`` (a step that is a chord: its
    body too), and report those that belong to a chord."""
    if not chain:
        return
    try:
        pending = deque(signatures(chain, app=app))
    except Exception as exc_:  # InvalidSignature, or absurd nesting
        logger.error("A chain to fail is malformed (%r): its steps stay as they are", exc_)
        return
    while pending:
        sig = pending.popleft()
        request = request_of(sig)
        try:
            failed = bool(request.chord and request.id) and \
                (yield TaskState(request.id)) in states.PROPAGATE_STATES
            if request.id:
                yield Store(request.id, states.FAILURE, exc, traceback, request)
        except Exception as error:
            logger.error("Could not mark chain step %s[%s] failed: %r", sig.task, request.id, error)
            failed = True
        if request.chord and not failed:
            yield from report_to_chord(app, request, states.FAILURE, exc)
        if sig.subtask_type == "chord" and sig.kwargs.get("body") is not None:
            pending.append(maybe_signature(sig.kwargs["body"], app=app))


def call_errbacks(app: Celery, request: Any, exc: Any, traceback: str | None) -> Duty[None]:
    """Call or send the errbacks of a failed task (see the module docstring)."""
    from .groups import group

    as_tasks = []
    for errback in _errbacks(app, request):
        task = app.tasks.get(errback.task)
        if task is None or not _takes_request(task, errback):
            as_tasks.append(errback)
            continue
        try:
            yield Call(errback, (request, exc, traceback), is_async=bool(task.is_async))
        except Exception as error:
            logger.exception("Errback %s of task %s[%s] raised: %r", errback.task,
                             request.task, request.id, error)
    if not as_tasks:
        return
    options = {"parent_id": request.id, "root_id": request.root_id or request.id}
    try:
        yield Send(group(as_tasks, app=app), (request.id,), None, options)
    except Exception as error:
        logger.error("Task %s[%s]: could not send its errbacks: %r", request.task, request.id,
                     error)


def _errbacks(app: Celery, request: Any) -> Iterable[Any]:
    try:
        return signatures(request.errbacks or (), app=app)
    except Exception as exc:  # InvalidSignature, or absurd nesting
        logger.error("Task %s[%s]: its errbacks are malformed, none called: %r", request.task,
                     request.id, exc)
        return ()


def _takes_request(task: Any, errback: Any) -> bool:
    """Celery's test: the errback's function takes more than one argument (once those its
    signature holds are given), so it gets ``(request, exc, traceback)``."""
    fn = getattr(task, "__wrapped__", None) or task.run
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if getattr(task, "_bound", False) and params:
        params = params[1:]  # self
    if not errback.immutable:
        params = params[len(errback.args):]
        params = [p for p in params if p.name not in (errback.kwargs or {})]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > 1

