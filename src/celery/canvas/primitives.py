"""The canvas: chain, group, chord, chunks, map/starmap, composed with ``|``.

They are Signatures whose ``kwargs`` hold their members (laid out as Celery's, so either
side reads the other's): ``celery.chain`` ``{"tasks": [...]}``, ``celery.group``
``{"tasks": [...]}``, ``celery.chord`` ``{"header": [...], "body": {...}, "kwargs": {}}``,
``celery.chunks`` ``{"task", "it", "n"}``, ``celery.map``/``celery.starmap``
``{"task", "it"}``.

How they travel, as in Celery's protocol v2:

* **chain**: the first task's message carries the rest, last first, in its body's
  ``chain``; the worker that runs a step sends the next with the step's return value
  prepended to its arguments (``worker/canvas.py``).
* **group**: each member is sent at once with the group's id and its index (headers
  ``group``, ``group_index``); the result is a ``GroupResult``.
* **chord**: each header member carries the body in its ``chord`` field; the backend counts
  finished members (``canvas/join.py``), and the worker that finishes the last one sends
  the body with the list of the header's results, in header order. The header size is
  stored first (Redis: ``celery-taskset-meta-<group>.s``).

Composing (``|``) follows Celery: ``sig | sig`` and ``sig | chain`` make chains; a group
followed by anything becomes a chord with that as its body; ``chord | sig`` appends to the
chord's body. Sending builds every message first (pure), then does the backend writes and
the publishes in one go (``canvas/dispatch.py``): a group of N costs one pipelined round trip.
"""

from __future__ import annotations

import itertools
import operator
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any

from ..messaging.protocol import uuid4_str
from .signatures import Signature, _given, _item, maybe_signature, signature, signatures

if TYPE_CHECKING:
    from ..app.base import Celery
    from .dispatch import Dispatch

__all__ = ["chain", "chord", "chunks", "group", "maybe_unroll_group", "xmap", "xstarmap"]

#: Options of ``chain.apply_async`` that steer the whole chain rather than its first task.
_CHAIN_RUN_OPTIONS = frozenset({"chord", "group_id", "group_index", "link", "link_error",
                                "parent_id", "root_id", "task_id"})


def _tasks_of(value: Any) -> list[Any]:
    """A list of members: a list/tuple as given, a generator (or other iterable) drained."""
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping) or isinstance(value, str | bytes):
        return [value]
    return list(value)


def maybe_unroll_group(g: group) -> Any:
    """A group of one task stands for that task."""
    return g.tasks[0] if len(g.tasks) == 1 else g


def _is_empty_group(sig: Any) -> bool:
    return isinstance(sig, group) and not sig.tasks


def compose(left: Signature, right: Any) -> Any:
    """``left | right`` for a single-task signature on the left."""
    if isinstance(right, _chain):
        return _chain([left, *right.unchain_tasks()], app=left._app)
    if isinstance(right, group):
        return _chain(left, maybe_unroll_group(right), app=left._app)
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
        if _is_empty_group(other):
            return self
        if isinstance(other, group):
            other = maybe_unroll_group(other)
            if not isinstance(other, group):
                return self | other
            tasks = self.unchain_tasks()
            if not tasks:
                return other
            if isinstance(tasks[-1], _chord):
                tasks[-1].body = tasks[-1].body | other
                return type(self)(tasks, app=self._app)
            return type(self)([*tasks, other], app=self._app)
        if isinstance(other, _chain):
            return reduce(operator.or_, other.unchain_tasks(), self)
        if isinstance(other, Signature):
            if self.tasks and isinstance(self.tasks[-1], group):
                sig = self.clone()
                sig.tasks[-1] = _chord(sig.tasks[-1], other, app=self._app)
                if len(sig.tasks) > 1 and isinstance(sig.tasks[-2], _chord):
                    sig.tasks[-2].body = sig.tasks[-2].body | sig.tasks[-1]
                    sig.tasks = sig.tasks[:-1]
                return sig
            if self.tasks and isinstance(self.tasks[-1], _chord) and not isinstance(other, _chord):
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
            if isinstance(task, group):
                task = maybe_unroll_group(task)
                if _is_empty_group(task) and (steps or prev_task):
                    continue
            if clone and isinstance(task, _chord) and _chain_led_by_task(task.body):
                steps.extend(task.unroll_body())
                continue
            if clone:
                task = task.clone(args, kwargs) if is_first else task.clone()
            elif is_first:
                task.args = tuple(args) + tuple(task.args)
            if isinstance(task, _chain):
                steps.extend(task.tasks)
                continue
            if isinstance(task, group) and prev_task is not None:
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
                if isinstance(task, _chord) and task.body is not None:
                    task.body.link_error(errback)
            out_tasks.append(task)
            results.append(res)
            prev_task, prev_res = task, res
            if isinstance(task, _chord):
                node = res
                while node.parent is not None:
                    node = node.parent
                prev_res = node
        if clone:
            for task in out_tasks:
                _strip_chord_header_links(task)
        return out_tasks, results

    @staticmethod
    def _upgrade_to_chord(task: group, out_tasks: list[Signature], results: list[Any],
                          root_id: str | None, app: Celery) -> tuple[Signature, Any, Any]:
        """A group followed by a step (the one last added) becomes ``chord(group, step)``;
        returns it with the new previous step and result."""
        body = out_tasks.pop()
        body_res = results.pop()
        new = _chord(task, body=body, task_id=body_res.id, root_id=root_id, app=app)
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
        tasks = [t for t in self.tasks if not _is_empty_group(t)] or list(self.tasks)
        task_options = {**self.options, **_given(options)}
        link = task_options.pop("link", None)
        for index, task in enumerate(tasks):
            step = maybe_signature(task, app=self._app).clone()
            if link and index == len(tasks) - 1:
                (step.body if isinstance(step, _chord) else step).extend_list_option("link", link)
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


def _app_of(sig: Signature, members: Sequence[Any]) -> Celery:
    """A canvas's app: its own, else that of the first of ``members`` bound to one, else
    that of the first nested canvas among them (a chord finds its members'), else the
    current app."""
    if sig._app is None:
        for member in members:
            if isinstance(member, Signature) and member._app is not None:
                return member._app
        for member in members:
            if isinstance(member, Signature) and type(member) is not Signature:
                return member.app
    return Signature.app.fget(sig)  # type: ignore[attr-defined,no-any-return]


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


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
        if isinstance(head, group):
            head = steps[0] = maybe_unroll_group(head)
            if len(steps) > 1 and _is_empty_group(head):
                stripped = steps.popleft()
                continue
        break
    if stripped is not None and not steps:
        steps.append(stripped)
    return steps


def _chain_led_by_task(body: Any) -> bool:
    return isinstance(body, _chain) and bool(body.tasks) and not isinstance(body.tasks[0], group)


def _merge_step(steps: list[Any], other: Any, clone_other: bool = True) -> Any:
    """Add ``other`` to the folded ``steps``; returns ``steps``, or a new signature when the
    fold cannot go on in place (the rest is then or-ed onto it), or NotImplemented."""
    if _is_empty_group(other):
        return steps
    if isinstance(other, group):
        other = maybe_unroll_group(other)
        if not isinstance(other, group):
            return _merge_step(steps, other, clone_other)
        if not steps:
            return other
        if isinstance(steps[-1], _chord):
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
        if steps and isinstance(steps[-1], group):
            steps[-1] = _chord(steps[-1], other.clone() if clone_other else other)
            return steps
        if steps and isinstance(steps[-1], _chord) and not isinstance(other, _chord):
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
    if isinstance(sig, _chord):
        _clear_chord_option(sig.tasks)
        _strip_chord_header_links(sig.tasks)
        if sig.body is not None:
            _strip_chord_header_links(sig.body)
    elif isinstance(sig, group | _chain):
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
    if isinstance(sig, group):
        for task in sig.tasks:
            _clear_chord_option(task)
    elif isinstance(sig, _chain) and sig.tasks:
        _clear_chord_option(sig.tasks[-1])
    elif isinstance(sig, _chord) and sig.body is not None:
        _clear_chord_option(sig.body)


# -- group ----------------------------------------------------------------------------------


@Signature.register_type()
class group(Signature):
    """Tasks run in parallel; ``apply_async`` returns a ``GroupResult``."""

    tasks = _item("kwargs.tasks", "The members.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        return cls(signatures(d["kwargs"]["tasks"], app=app), app=app, **dict(d.get("options") or {}))

    def __init__(self, *tasks: Any, **options: Any) -> None:
        members: Any = tasks
        if len(tasks) == 1:
            members = tasks[0]
            if isinstance(members, group):
                members = members.tasks
            if isinstance(members, Signature):
                members = [members.clone()]
        super().__init__("celery.group", (), {"tasks": _tasks_of(members)}, **options)
        self.subtask_type = "group"

    def __call__(self, *partial_args: Any, **options: Any) -> Any:
        return self.apply_async(partial_args, **options)

    def __or__(self, other: Any) -> Any:
        if _is_empty_group(other):
            return self
        return _chord(self, body=other, app=self._app)

    def __len__(self) -> int:
        return len(self.tasks)

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Spread the members' start: countdowns ``start``, ``start + step``, ... (capped at
        ``stop``)."""
        countdown = start
        for task in self.tasks:
            task.set(countdown=countdown)
            countdown = min(countdown + step, stop) if stop is not None else countdown + step
        return self

    def set_immutable(self, immutable: bool) -> None:
        for task in self.tasks:
            task.set_immutable(immutable)

    def link(self, sig: Any) -> Any:
        """Celery's rule: a group's callback is linked (immutable) to its first member; to
        run something after every member, use a chord."""
        return self.tasks[0].link(maybe_signature(sig, app=self._app).clone().set(immutable=True))

    def link_error(self, sig: Any) -> Any:
        sig = maybe_signature(sig, app=self._app)
        return tuple(member.link_error(sig.clone()) for member in self.tasks)

    @property
    def app(self) -> Celery:
        return _app_of(self, self.tasks[:1])

    # -- sending -------------------------------------------------------------------------------

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    add_to_parent: bool = True, link: Any = None, link_error: Any = None,
                    **options: Any) -> Any:
        _refuse_group_links(link, link_error)
        return super().apply_async(args, kwargs, add_to_parent=add_to_parent, **options)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None, add_to_parent: bool = True,
                           link: Any = None, link_error: Any = None, **options: Any) -> Any:
        _refuse_group_links(link, link_error)
        return await super().aapply_async(args, kwargs, add_to_parent=add_to_parent, **options)

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        from ..result import GroupResult

        if not self.tasks:
            return self.freeze()
        opts, group_id, root_id = self._freeze_gid(options)
        chord = opts.pop("chord", None)
        add_to_parent = opts.pop("add_to_parent", True)
        # The group's own index (in the chord header it belongs to) is not its members':
        # each keeps the one it was frozen with, as Celery's group sends them.
        opts.pop("group_index", None)
        # A frozen group holds root_id/parent_id None: as in Celery's send_task, None is not
        # an id, and members sent from a task get that task's (a chord it sends, say).
        for key in ("root_id", "parent_id"):
            if key in opts and opts[key] is None:
                del opts[key]
        members = list(self._prepared(self.tasks, group_id, root_id, self.app))
        size = 0
        for index, (sig, _) in enumerate(members):
            body = chord if chord is not None else sig.options.get("chord")
            size += _chord.descend(sig)
            if body is not None and index == len(members) - 1:
                dispatch.set_chord_size(group_id, size)
            sig._collect(dispatch, args, kwargs, {**opts, "chord": body, "add_to_parent": False})
        results = [res for _, res in members]
        dispatch.adopt(results)
        result = GroupResult(group_id, results, app=self.app)
        if len(result) == 1 and isinstance(result[0], GroupResult):
            result = result[0]
        if add_to_parent:  # sent from a task: one of its children (Celery's trail)
            dispatch.add_trail(result)
        return result

    def _freeze_gid(self, options: Mapping[str, Any]) -> tuple[dict[str, Any], str, str | None]:
        own = self.options
        opts = {**own, **{k: v for k, v in options.items()
                          if k not in ("group_id", "stamped_headers") or k not in own}}
        opts["group_id"] = group_id = opts.pop("task_id", None) or uuid4_str()
        return opts, group_id, opts.get("root_id")

    #: True when the members are this group's own copies (a chord's header, once frozen):
    #: sending then uses them as they are, where it otherwise works on copies.
    fresh = False

    def _prepared(self, tasks: Sequence[Any], group_id: str, root_id: str | None,
                  app: Celery) -> Iterator[tuple[Signature, Any]]:
        """Each member cloned and frozen into the group (nested groups flattened)."""
        for index, task in enumerate(tasks):
            task = maybe_signature(task, app=app)
            if not self.fresh:
                task = task.clone()
            if isinstance(task, group):
                yield from self._prepared(task.tasks, group_id, root_id, app)
            elif isinstance(task, _chain) and not task.tasks:
                continue
            else:
                yield task, task.freeze(group_id=group_id, root_id=root_id, group_index=index)

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        from ..result import GroupResult

        gid, results = self.freeze_members(_id, group_id, chord, root_id, parent_id, group_index)
        return GroupResult(gid, results, app=self.app)

    def freeze_members(self, _id: str | None = None, group_id: str | None = None,
                       chord: Any = None, root_id: str | None = None,
                       parent_id: str | None = None,
                       group_index: int | None = None) -> tuple[str, list[Any]]:
        """Fix the group's id and every member's (flattened, indexed in order); returns
        ``(group id, member results)``."""
        opts = self.options
        gid = opts.get("task_id")
        if not gid:
            gid = opts["task_id"] = _id or uuid4_str()
        if group_id:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        root_id = opts.setdefault("root_id", root_id)
        parent_id = opts.setdefault("parent_id", parent_id)
        stack: deque[Any] = deque(self.tasks)
        members: list[Signature] = []
        results: list[Any] = []
        while stack:
            task = maybe_signature(stack.popleft(), app=self._app).clone()
            if isinstance(task, group):
                stack.extendleft(reversed(task.tasks))
            elif isinstance(task, _chain) and not task.tasks:
                continue
            else:
                members.append(task)
                results.append(task.freeze(group_id=group_id, chord=chord, root_id=root_id,
                                           parent_id=parent_id, group_index=len(results)))
        self.tasks = members
        return gid, results

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run every member here and now (eager); a GroupResult of EagerResults."""
        from ..result import GroupResult

        if not self.tasks:
            return self.freeze()
        opts, group_id, root_id = self._freeze_gid(_given(options))
        results = [sig.apply(args, kwargs, **opts)
                   for sig, _ in self._prepared(self.tasks, group_id, root_id, self.app)]
        return GroupResult(group_id, results, app=self.app)

    def __repr__(self) -> str:
        return f"group({list(self.tasks)!r})" if self.tasks else "group(<empty>)"


def _refuse_group_links(link: Any, link_error: Any) -> None:
    if link is not None:
        raise TypeError("Cannot add link to group: use a chord")
    if link_error is not None:
        raise TypeError("Cannot add link to group: do that on individual tasks")


# -- chord ----------------------------------------------------------------------------------


def _header_of(header: Any, app: Celery | None) -> list[Any]:
    if isinstance(header, Mapping) and not isinstance(header, Signature):
        header = signature(header, app=app)
    if isinstance(header, group | _chain):
        return list(header.tasks)
    if isinstance(header, Signature):
        return [header]
    return [maybe_signature(t, app=app) for t in _tasks_of(header)]


@Signature.register_type(name="chord")
class _chord(Signature):
    """``chord(header, body)``: the header's tasks run in parallel; when all are done the
    body runs with the list of their results (in header order)."""

    tasks = _item("kwargs.header", "The header's members.")
    body = _item("kwargs.body", "What runs with the header's results.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        kwargs = dict(d["kwargs"])
        header, body = kwargs.pop("header", None), kwargs.pop("body", None)
        if isinstance(header, Mapping):
            # Celery sends a frozen chord's header as a celery.group dict (the group's id
            # is the chord's task_id): its members are the header, as Celery reads it.
            header = _header_of(header, app)
        return cls(signatures(header or [], app=app), maybe_signature(body, app=app),
                   task=d.get("task", "celery.chord"), args=d.get("args"), kwargs=kwargs,
                   app=app, options=dict(d.get("options") or {}),
                   immutable=bool(d.get("immutable")))

    def __init__(self, header: Any, body: Any = None, task: str = "celery.chord",
                 args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                 app: Celery | None = None, **options: Any) -> None:
        extra = dict(kwargs) if kwargs else {"kwargs": {}}
        super().__init__(task, args, {**extra, "header": _header_of(header, app),
                                      "body": maybe_signature(body, app=app)}, app=app, **options)
        self.subtask_type = "chord"

    def __call__(self, body: Any = None, **options: Any) -> Any:
        return self.apply_async((), {"body": body} if body else {}, **options)

    def __or__(self, other: Any) -> Any:
        if isinstance(other, group) and len(other.tasks) == 1:
            other = maybe_unroll_group(other)
        if isinstance(other, Signature) and not isinstance(other, group | _chain):
            sig = self.clone()
            sig.body = sig.body | other
            return sig
        return compose(self, other)

    def clone(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        sig: Any = super().clone(args, kwargs, **options)
        sig.tasks = [maybe_signature(t, app=self._app, clone=True) for t in sig.tasks]
        if sig.body is not None:
            sig.body = maybe_signature(sig.body, app=self._app, clone=True)
        return sig

    def unroll_body(self) -> list[Signature]:
        """As chain steps: this chord with only the first task of its body chain as body,
        then the rest of that chain (Celery 5.7 sends a chord inside a chain this way)."""
        sig = self.clone()
        body_tasks = sig.body.unchain_tasks()
        first_options = {k: v for k, v in sig.body.options.items() if k not in _CHAIN_RUN_OPTIONS}
        sig.body = body_tasks[0].clone(**first_options)
        return [sig, *body_tasks[1:]]

    @classmethod
    def descend(cls, sig: Any) -> int:
        """How many results ``sig`` contributes to a chord it is a header member of."""
        if not isinstance(sig, Signature) and isinstance(sig, Mapping):
            sig = Signature.from_dict(sig)
        if isinstance(sig, group):
            return sum(cls.descend(task) for task in sig.tasks)
        if isinstance(sig, _chain):
            for step in reversed(sig.tasks):
                size = cls.descend(step)
                if size > 0:
                    return size
            return 0
        if isinstance(sig, _chord):
            return cls.descend(sig.body)
        return 1

    def __length_hint__(self) -> int:
        return sum(self.descend(task) for task in self.tasks)

    def link(self, callback: Any) -> Any:
        self.body.link(callback)
        return callback

    def link_error(self, errback: Any) -> Any:
        errback = maybe_signature(errback, app=self._app)
        if self.app.conf.get("task_allow_error_cb_on_chord_header"):
            for task in self.tasks:
                task.link_error(errback.clone(immutable=True))
        for task in self.tasks:
            if isinstance(task, _chord):
                task.link_error(errback)
        self.body.link_error(errback)
        return errback

    def set_immutable(self, immutable: bool) -> None:
        for task in self.tasks:
            task.set_immutable(immutable)

    @property
    def app(self) -> Celery:
        return _app_of(self, [*self.tasks[:1], self.body])

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        header = group(self.tasks, app=self._app)
        header_result = header.freeze(parent_id=parent_id, root_id=root_id, chord=self.body)
        self.tasks = header.tasks
        self.id = header.options["task_id"]
        if self.body is None:
            return None
        body_result = self.body.freeze(_id, root_id=root_id, chord=chord, group_id=group_id,
                                       group_index=group_index)
        node, seen = body_result, set()
        while node is not None:
            if node.id in seen:
                raise RuntimeError("Recursive result parents")
            seen.add(node.id)
            if node.parent is None:
                node.parent = header_result
                break
            node = node.parent
        return body_result

    # -- sending -------------------------------------------------------------------------------

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        from ..result import GroupResult

        opts = {**self.options, **{k: v for k, v in options.items() if v is not None}}
        kwargs = dict(kwargs or {})
        args = tuple(args) + tuple(self.args) if args and not self.immutable else tuple(self.args)
        body = kwargs.pop("body", None) or self.body
        extra_kwargs = {**(self.kwargs.get("kwargs") or {}), **kwargs}
        delay = {k: opts.pop(k) for k in ("countdown", "eta") if opts.get(k) is not None}
        task_id = opts.pop("task_id", None)
        # (freeze_members below makes the header's own copies of the members)
        header = group(list(self.tasks), app=self.app,
                       task_id=self.options.get("task_id") or uuid4_str())
        header.fresh = True
        group_id = header.options["task_id"]
        body = _with_body_callbacks(maybe_signature(body, app=self._app).clone(), opts)
        body.options.update({k: v for k, v in opts.items() if k != "parent_id"})
        if isinstance(body, _chain):
            body.tasks = _unrolled_chords(body.tasks)
        body_result = body.freeze(task_id or uuid4_str(), group_id=group_id,
                                  root_id=body.options.get("root_id"))
        _strip_chord_header_links(body)
        # The header's members report to this chord, in this chord's own group: not to the
        # chain or the outer group the chord may be part of (its body does that).
        for key in ("chain", "chord", "task_id", "group_index"):
            opts.pop(key, None)
        gid, members = header.freeze_members(group_id=group_id, chord=body,
                                             root_id=body.options.get("root_id"))
        if header.tasks:
            backend = self.app.backend
            backend.ensure_chords_allowed()
            if any(isinstance(r, GroupResult) for r in members):
                dispatch.save_group(GroupResult(gid, members, app=self.app))
            # (Sent from a task, the header group is one of its children: group._collect.)
            header_result = header._collect(dispatch, args, extra_kwargs,
                                            {**opts, **delay, "task_id": group_id})
            if not backend.supports_chord_join:
                _unlock_chord(dispatch, gid, members, body)
        else:  # no member will ever finish: the body runs now, with no results
            body._collect(dispatch, ([],), None, {})
            header_result = GroupResult(gid, members, app=self.app)
        body_result.parent = header_result
        return body_result

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              propagate: bool = True, body: Any = None, **options: Any) -> Any:
        """Run the header, then the body with its results, here and now (eager)."""
        from ..result import allow_join_result

        body = self.body if body is None else body
        header = group([maybe_signature(t, app=self._app).clone() for t in self.tasks],
                       app=self.app)
        with allow_join_result():
            values = header.apply(args, kwargs).get(propagate=propagate)
        return maybe_signature(body, app=self._app).apply((values,))

    def __repr__(self) -> str:
        if self.body is None:
            return f"<chord without body: {self.tasks!r}>"
        return f"%{self.body.reprcall(list(self.tasks))}" if not isinstance(self.body, _chain) \
            else f"%({self.tasks!r} | {self.body!r})"


chord = _chord


def _unlock_chord(dispatch: Dispatch, group_id: str, members: list[Any], body: Signature) -> None:
    """For a backend without a chord join of its own: Celery's ``celery.chord_unlock`` task,
    which waits for the header's results (retrying itself) and then sends the body. It goes
    where the body goes."""
    app = body.app
    task = app.tasks.get(body.task)
    queue = body.options.get("queue") or getattr(task, "queue", None)
    options: dict[str, Any] = {"countdown": 1}
    if queue:
        options["queue"] = queue
    priority = body.options.get("priority", getattr(task, "priority", None))
    if priority is not None:
        options["priority"] = priority
    dispatch.add_task("celery.chord_unlock", (group_id, body),
                      {"interval": None, "max_retries": None,
                       "result": [r.as_tuple() for r in members]}, options)


def _with_body_callbacks(body: Signature, options: dict[str, Any]) -> Signature:
    """Move the chord's ``link``/``link_error`` options onto its body (Celery's rule: a
    group body gets the errback on each member)."""
    for callback in _listed(options.pop("link", None)):
        callback = maybe_signature(callback, app=body._app, clone=True)
        if isinstance(body, group) and not body.tasks:
            body.append_to_list_option("link", callback)
        else:
            body.link(callback)
    for errback in _listed(options.pop("link_error", None)):
        errback = maybe_signature(errback, app=body._app)
        if isinstance(body, group):
            for member in body.tasks:
                maybe_signature(member, app=body._app).link_error(errback.clone())
        else:
            body.append_to_list_option("link_error", errback)
    return body


def _unrolled_chords(tasks: list[Any]) -> list[Any]:
    """A body chain's steps, with every chord whose body is a chain led by a task unrolled."""
    pending, out = deque(tasks), []
    while pending:
        task = maybe_signature(pending.popleft())
        if isinstance(task, _chord) and _chain_led_by_task(task.body):
            pending.extendleft(reversed(task.unroll_body()))
        else:
            out.append(task)
    return out


# -- chunks, map, starmap ---------------------------------------------------------------------


class _basemap(Signature):
    """``celery.map``/``celery.starmap``: one message that applies a task to each item."""

    _task_name = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        kwargs = d["kwargs"]
        return cls(kwargs["task"], kwargs["it"], app=app, **dict(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], **options: Any) -> None:
        super().__init__(self._task_name, (), {"task": task, "it": list(it)}, immutable=True,
                         **options)

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        _, _, opts = self._merge(None, None, options)
        opts.setdefault("route_name", _name_of(self.kwargs.get("task")))
        return dispatch.add_task(self.task, (), {"task": self.kwargs["task"],
                                                 "it": list(self.kwargs["it"])}, opts)


@Signature.register_type()
class xmap(_basemap):
    """``task.map(it)``: ``[task(x) for x in it]`` in one task."""

    _task_name = "celery.map"

    def __repr__(self) -> str:
        return f"[{_name_of(self.kwargs.get('task'))}(x) for x in {self.kwargs.get('it')!r:.100}]"


@Signature.register_type()
class xstarmap(_basemap):
    """``task.starmap(it)``: ``[task(*x) for x in it]`` in one task."""

    _task_name = "celery.starmap"

    def __repr__(self) -> str:
        return f"[{_name_of(self.kwargs.get('task'))}(*x) for x in {self.kwargs.get('it')!r:.100}]"


@Signature.register_type()
class chunks(Signature):
    """``task.chunks(it, n)``: the items split in parts of ``n``, each part one
    ``celery.starmap`` task, all sent as a group."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        kwargs = d["kwargs"]
        return cls(kwargs["task"], kwargs["it"], kwargs["n"], app=app, **dict(d.get("options") or {}))

    def __init__(self, task: Any, it: Iterable[Any], n: int, **options: Any) -> None:
        super().__init__("celery.chunks", (), {"task": task, "it": list(it), "n": int(n)},
                         immutable=True, **options)

    def __call__(self, **options: Any) -> Any:
        return self.apply_async(**options)

    def group(self) -> group:
        task, it, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = (list(itertools.islice(items, n)) for items in itertools.repeat(iter(it)))
        return group([xstarmap(task, part, app=self._app)
                      for part in itertools.takewhile(bool, parts)], app=self._app)

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        opts = {**self.options, **options}
        opts.setdefault("route_name", _name_of(self.kwargs.get("task")))
        return self.group()._collect(dispatch, args, kwargs, opts)

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:
        return self.group().apply_async(args, kwargs, route_name=_name_of(self.kwargs.get("task")),
                                        **options)

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        return await self.group().aapply_async(
            args, kwargs, route_name=_name_of(self.kwargs.get("task")), **options)

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        return self.group().apply(args, kwargs, **options)

    @classmethod
    def apply_chunks(cls, task: Any, it: Iterable[Any], n: int, app: Celery | None = None) -> Any:
        return cls(task, it, n, app=app)()


def _name_of(task: Any) -> Any:
    if isinstance(task, Mapping):
        return task.get("task")
    return getattr(task, "name", task)
