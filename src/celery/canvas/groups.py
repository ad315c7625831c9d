"""Groups: tasks run in parallel; sending one returns a ``GroupResult``.

``celery.group`` ``{"tasks": [...]}``. Each member is sent at once with the group's id and
its index (headers ``group``, ``group_index``), all in one pipelined batch
(canvas/dispatch.py). Nested groups are flattened; a group followed by a step is a chord.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..messaging.protocol import uuid4_str
from . import chains, chords
from .signatures import Signature, _app_of, _given, _item, _tasks_of, maybe_signature, signatures

if TYPE_CHECKING:
    from ..app.base import Celery
    from .dispatch import Dispatch

__all__ = ["group", "maybe_unroll_group"]


def maybe_unroll_group(g: group) -> Any:
    """A group of one task stands for that task."""
    return g.tasks[0] if len(g.tasks) == 1 else g


def _is_empty_group(sig: Any) -> bool:
    return isinstance(sig, group) and not sig.tasks



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
        return chords._chord(self, body=other, app=self._app)

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
            size += chords._chord.descend(sig)
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
            elif isinstance(task, chains._chain) and not task.tasks:
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
            elif isinstance(task, chains._chain) and not task.tasks:
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
