"""Chains: tasks run one after the other, each given the return value of the one before.

``celery.chain`` ``{"tasks": [...]}``. The first task's message carries the rest, last
first, in its body's ``chain``; the worker that runs a step sends the next with the step's
return value prepended to its arguments (canvas/followups.py). ``|`` and ``chain(...)``
compose as Celery does: ``sig | sig`` and ``sig | chain`` make chains, a group followed by
a step becomes a chord, ``chain(group, sig)`` is that chord (``_fold``).
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Mapping, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any

from . import chords, groups
from .signatures import (
    Signature,
    _app_of,
    _given,
    _item,
    _listed,
    _tasks_of,
    maybe_signature,
    signatures,
)

if TYPE_CHECKING:
    from ..app.base import Celery
    from .dispatch import Dispatch

__all__ = ["chain", "compose"]

#: Options of ``chain.apply_async`` that steer the whole chain rather than its first task.
_CHAIN_RUN_OPTIONS = frozenset({"chord", "group_id", "group_index", "link", "link_error",
                                "parent_id", "root_id", "task_id"})


def compose(left: Signature, right: Any) -> Any:
    """``left | right`` for a single-task signature on the left."""
    if isinstance(right, _chain):
        return _chain([left, *right.unchain_tasks()], app=left._app)
    if isinstance(right, groups.group):
        return _chain(left, groups.maybe_unroll_group(right), app=left._app)
    if isinstance(right, Signature):
        return _chain(left, right, app=left._app)
    return NotImplemented


# -- chain ----------------------------------------------------------------------------------


@Signature.register_type(name="chain")
class _chain(Signature):
    """Tasks run one after the other, each given the return value of the one before."""

    tasks = _item("kwargs.tasks", "The steps, first first.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        sig = cls(signatures(d["kwargs"]["tasks"], app=app), app=app, **dict(d.get("options") or {}))
        sig.args, sig.immutable = tuple(d.get("args") or ()), bool(d.get("immutable"))
        return sig

    def __init__(self, *tasks: Any, **options: Any) -> None:
        steps = _tasks_of(tasks[0]) if len(tasks) == 1 and not isinstance(tasks[0], Mapping) \
            else list(tasks)
        if options.pop("use_link", None):
            raise NotImplementedError("use_link (Celery's task protocol 1 chains) is not "
                                      "supported: chains travel in the message (protocol 2)")
        super().__init__("celery.chain", (), {"tasks": steps}, **options)
        self.subtask_type = "chain"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.tasks:
            return self.apply_async(args, kwargs)
        return None

    def __or__(self, other: Any) -> Any:
        if groups._is_empty_group(other):
            return self
        if isinstance(other, groups.group):
            other = groups.maybe_unroll_group(other)
            if not isinstance(other, groups.group):
                return self | other
            tasks = self.unchain_tasks()
            if not tasks:
                return other
            if isinstance(tasks[-1], chords._chord):
                tasks[-1].body = tasks[-1].body | other
                return type(self)(tasks, app=self._app)
            return type(self)([*tasks, other], app=self._app)
        if isinstance(other, _chain):
            return reduce(operator.or_, other.unchain_tasks(), self)
        if isinstance(other, Signature):
            if self.tasks and isinstance(self.tasks[-1], groups.group):
                sig = self.clone()
                sig.tasks[-1] = chords._chord(sig.tasks[-1], other, app=self._app)
                if len(sig.tasks) > 1 and isinstance(sig.tasks[-2], chords._chord):
                    sig.tasks[-2].body = sig.tasks[-2].body | sig.tasks[-1]
                    sig.tasks = sig.tasks[:-1]
                return sig
            if self.tasks and isinstance(self.tasks[-1], chords._chord) and not isinstance(other, chords._chord):
                sig = self.clone()
                sig.tasks[-1].body = sig.tasks[-1].body | other
                return sig
            return type(self)([*self.unchain_tasks(), other], app=self._app)
        return NotImplemented

    def clone(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        sig: Any = super().clone(args, kwargs, **options)
        sig.tasks = [maybe_signature(t, app=self._app, clone=True) for t in sig.tasks]
        return sig

    def unchain_tasks(self) -> list[Signature]:
        """Copies of the steps, with the chain's own link on the last and its link_error
        on every one."""
        tasks = [maybe_signature(t, app=self._app).clone() for t in self.tasks]
        for callback in _listed(self.options.get("link")):
            tasks[-1].link(callback)
        for errback in _listed(self.options.get("link_error")):
            for task in tasks:
                task.link_error(errback)
        return tasks

    @property
    def app(self) -> Celery:
        return _app_of(self, self.tasks[:1])

    # -- sending -------------------------------------------------------------------------------

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        opts = {**self.options, **options}
        run = {k: opts.pop(k, None) for k in _CHAIN_RUN_OPTIONS}
        args = tuple(args) + tuple(self.args) if args and not self.immutable else tuple(self.args)
        steps, results = self.prepare_steps(
            args, kwargs or {}, self.tasks, run["root_id"], run["parent_id"], run["link_error"],
            self.app, run["task_id"], run["group_id"], run["chord"], group_index=run["group_index"])
        if not results:
            return None
        if run["link"]:
            steps[0].extend_list_option("link", run["link"])
        first = steps.pop()
        # The rest travel last first: the worker pops the next step from the end.
        opts["chain"] = steps + list(opts["chain"]) if opts.get("chain") else steps
        sent = first._collect(dispatch, None, None, opts)
        return sent if not steps else results[0]

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        _, results = self.prepare_steps(self.args, self.kwargs, self.tasks, root_id, parent_id,
                                        None, self.app, _id, group_id, chord, clone=False,
                                        group_index=group_index)
        return results[0] if results else None

    def prepare_steps(self, args: Sequence[Any], kwargs: Mapping[str, Any], tasks: Sequence[Any],
                      root_id: str | None = None, parent_id: str | None = None,
                      link_error: Any = None, app: Celery | None = None,
                      last_task_id: str | None = None, group_id: str | None = None,
                      chord_body: Any = None, clone: bool = True,
                      group_index: int | None = None) -> tuple[list[Signature], list[Any]]:
        """Freeze every step (ids known before sending) and link their results by parent.

        Returns ``(steps, results)``, both LAST step first: ``results[0]`` is the chain's
        result, whose ``.parent`` leads back to the first step. A group followed by another
        step becomes a chord with that step as its body, as in Celery.
        """
        app = app or self.app
        steps = _leading_unrolled(deque(tasks), app, clone)
        out_tasks: list[Signature] = []
        results: list[Any] = []
        prev_task: Signature | None = None
        prev_res: Any = None
        while steps:
            task = maybe_signature(steps.pop(), app=app)
            is_first, is_last = not steps, not results
            if isinstance(task, groups.group):
                task = groups.maybe_unroll_group(task)
                if groups._is_empty_group(task) and (steps or prev_task):
                    continue
            if clone and isinstance(task, chords._chord) and _chain_led_by_task(task.body):
                steps.extend(task.unroll_body())
                continue
            if clone:
                task = task.clone(args, kwargs) if is_first else task.clone()
            elif is_first:
                task.args = tuple(args) + tuple(task.args)
            if isinstance(task, _chain):
                steps.extend(task.tasks)
                continue
            if isinstance(task, groups.group) and prev_task is not None:
                task, prev_task, prev_res = self._upgrade_to_chord(task, out_tasks, results,
                                                                   root_id, app)
            if is_last:
                res = task.freeze(last_task_id, root_id=root_id, group_id=group_id,
                                  chord=chord_body, group_index=group_index)
            else:
                res = task.freeze(root_id=root_id)
            if prev_task is not None and prev_res is not None and not prev_res.parent:
                prev_res.parent = res
            for errback in _listed(link_error):
                task.link_error(errback)
                if isinstance(task, chords._chord) and task.body is not None:
                    task.body.link_error(errback)
            out_tasks.append(task)
            results.append(res)
            prev_task, prev_res = task, res
            if isinstance(task, chords._chord):
                node = res
                while node.parent is not None:
                    node = node.parent
                prev_res = node
        if clone:
            for task in out_tasks:
                _strip_chord_header_links(task)
        return out_tasks, results

    @staticmethod
    def _upgrade_to_chord(task: groups.group, out_tasks: list[Signature], results: list[Any],
                          root_id: str | None, app: Celery) -> tuple[Signature, Any, Any]:
        """A group followed by a step (the one last added) becomes ``chord(group, step)``;
        returns it with the new previous step and result."""
        body = out_tasks.pop()
        body_res = results.pop()
        new = chords._chord(task, body=body, task_id=body_res.id, root_id=root_id, app=app)
        prev_task = out_tasks[-1] if out_tasks else None
        node = results[-1] if results else None
        while node is not None and node.parent is not body_res:
            node = node.parent
        prev_res = None
        if node is not None:
            node.parent = None
            prev_res = node
        return new, prev_task, prev_res

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run every step here and now, in order (eager); the last step's EagerResult."""
        from ..result import EagerResult

        last: Any = None
        given_args, given_kwargs = tuple(args or ()), dict(kwargs or {})
        tasks = [t for t in self.tasks if not groups._is_empty_group(t)] or list(self.tasks)
        task_options = {**self.options, **_given(options)}
        link = task_options.pop("link", None)
        for index, task in enumerate(tasks):
            step = maybe_signature(task, app=self._app).clone()
            if link and index == len(tasks) - 1:
                (step.body if isinstance(step, chords._chord) else step).extend_list_option("link", link)
            step_args = (last.get(),) if last is not None else given_args
            res = step.apply(step_args, given_kwargs if last is None else None, **task_options)
            res.parent, last = last, res
            if isinstance(res, EagerResult) and res.state in ("IGNORED", "REJECTED"):
                break
        return last

    def __repr__(self) -> str:
        if not self.tasks:
            return f"<{type(self).__name__}@{id(self):#x}: empty>"
        return " | ".join(repr(t) for t in self.tasks)


class chain(_chain):
    """``chain(a, b, c)``: folded as Celery folds it, so that what it makes is what
    ``a | b | c`` makes (``chain(group, sig)`` is a chord). With options (``chain(a, b,
    app=app)``), or a single member, it is a plain chain of what it is given."""

    def __new__(cls, *tasks: Any, **kwargs: Any) -> Any:
        if cls is chain and not kwargs and tasks and \
                (len(tasks) != 1 or isinstance(tasks[0], list | tuple)):
            return _fold(list(tasks[0]) if len(tasks) == 1 else list(tasks))
        return super().__new__(cls)


def _leading_unrolled(steps: deque[Any], app: Celery, clone: bool) -> deque[Any]:
    """The steps with leading nested chains flattened and leading empty groups dropped (one
    is kept when it is all there is)."""
    stripped = None
    while steps:
        head = steps[0] = maybe_signature(steps[0], app=app)
        if isinstance(head, _chain):
            steps.popleft()
            inner = head.clone() if clone else head
            steps.extendleft(reversed(inner.tasks))
            continue
        if isinstance(head, groups.group):
            head = steps[0] = groups.maybe_unroll_group(head)
            if len(steps) > 1 and groups._is_empty_group(head):
                stripped = steps.popleft()
                continue
        break
    if stripped is not None and not steps:
        steps.append(stripped)
    return steps


def _chain_led_by_task(body: Any) -> bool:
    return isinstance(body, _chain) and bool(body.tasks) and not isinstance(body.tasks[0], groups.group)


def _merge_step(steps: list[Any], other: Any, clone_other: bool = True) -> Any:
    """Add ``other`` to the folded ``steps``; returns ``steps``, or a new signature when the
    fold cannot go on in place (the rest is then or-ed onto it), or NotImplemented."""
    if groups._is_empty_group(other):
        return steps
    if isinstance(other, groups.group):
        other = groups.maybe_unroll_group(other)
        if not isinstance(other, groups.group):
            return _merge_step(steps, other, clone_other)
        if not steps:
            return other
        if isinstance(steps[-1], chords._chord):
            steps[-1].body = steps[-1].body | other
            return steps
        steps.append(other.clone() if clone_other else other)
        return steps
    if isinstance(other, _chain):
        inner = other.unchain_tasks()
        remaining = iter(inner)
        for position, task in enumerate(remaining):
            result = _merge_step(steps, task, clone_other or position != len(inner) - 1)
            if result is NotImplemented or result is not steps:
                return result if result is NotImplemented else reduce(operator.or_, remaining, result)
        return steps
    if isinstance(other, Signature):
        if steps and isinstance(steps[-1], groups.group):
            steps[-1] = chords._chord(steps[-1], other.clone() if clone_other else other)
            return steps
        if steps and isinstance(steps[-1], chords._chord) and not isinstance(other, chords._chord):
            steps[-1].body = steps[-1].body | other
            return steps
        steps.append(other.clone() if clone_other else other)
        return steps
    return NotImplemented


def _fold(tasks: list[Any]) -> Any:
    steps: list[Any] = []
    remaining = iter(tasks)
    for position, task in enumerate(remaining):
        result = _merge_step(steps, task, position != len(tasks) - 1)
        if result is NotImplemented:
            return reduce(operator.or_, tasks, _chain())
        if result is not steps:
            return reduce(operator.or_, remaining, result)
    return _chain([step.clone() for step in steps[:-1]] + steps[-1:])


def _strip_chord_header_links(sig: Any) -> None:
    """Clear stale ``chord`` options left in a chord header's members by an earlier freeze."""
    if isinstance(sig, chords._chord):
        _clear_chord_option(sig.tasks)
        _strip_chord_header_links(sig.tasks)
        if sig.body is not None:
            _strip_chord_header_links(sig.body)
    elif isinstance(sig, groups.group | _chain):
        for task in sig.tasks:
            _strip_chord_header_links(task)


def _clear_chord_option(sig: Any) -> None:
    if isinstance(sig, list):
        for task in sig:
            _clear_chord_option(task)
        return
    if not isinstance(sig, Signature):
        return
    sig.options.pop("chord", None)
    if isinstance(sig, groups.group):
        for task in sig.tasks:
            _clear_chord_option(task)
    elif isinstance(sig, _chain) and sig.tasks:
        _clear_chord_option(sig.tasks[-1])
    elif isinstance(sig, chords._chord) and sig.body is not None:
        _clear_chord_option(sig.body)
