"""Chords: a header of tasks run in parallel, then a body given the list of their results.

``celery.chord`` ``{"header": [...], "body": {...}, "kwargs": {}}``. Each header member
carries the body in its ``chord`` field; the backend counts finished members
(canvas/join.py), and the worker that finishes the last one sends the body with the list of
the header's results, in header order. The header size is stored first (Redis:
``celery-taskset-meta-<group>.s``); a backend without a join of its own gets Celery's
``celery.chord_unlock`` task instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..messaging.protocol import uuid4_str
from . import chains, groups
from .signatures import (
    Signature,
    _app_of,
    _item,
    _listed,
    _tasks_of,
    maybe_signature,
    signature,
    signatures,
)

if TYPE_CHECKING:
    from ..app.base import Celery
    from .dispatch import Dispatch

__all__ = ["chord"]


# -- chord ----------------------------------------------------------------------------------


def _header_of(header: Any, app: Celery | None) -> list[Any]:
    if isinstance(header, Mapping) and not isinstance(header, Signature):
        header = signature(header, app=app)
    if isinstance(header, groups.group | chains._chain):
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
        if isinstance(other, groups.group) and len(other.tasks) == 1:
            other = groups.maybe_unroll_group(other)
        if isinstance(other, Signature) and not isinstance(other, groups.group | chains._chain):
            sig = self.clone()
            sig.body = sig.body | other
            return sig
        return chains.compose(self, other)

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
        first_options = {k: v for k, v in sig.body.options.items() if k not in chains._CHAIN_RUN_OPTIONS}
        sig.body = body_tasks[0].clone(**first_options)
        return [sig, *body_tasks[1:]]

    @classmethod
    def descend(cls, sig: Any) -> int:
        """How many results ``sig`` contributes to a chord it is a header member of."""
        if not isinstance(sig, Signature) and isinstance(sig, Mapping):
            sig = Signature.from_dict(sig)
        if isinstance(sig, groups.group):
            return sum(cls.descend(task) for task in sig.tasks)
        if isinstance(sig, chains._chain):
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
        header = groups.group(self.tasks, app=self._app)
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
        header = groups.group(list(self.tasks), app=self.app,
                       task_id=self.options.get("task_id") or uuid4_str())
        header.fresh = True
        group_id = header.options["task_id"]
        body = _with_body_callbacks(maybe_signature(body, app=self._app).clone(), opts)
        body.options.update({k: v for k, v in opts.items() if k != "parent_id"})
        if isinstance(body, chains._chain):
            body.tasks = _unrolled_chords(body.tasks)
        body_result = body.freeze(task_id or uuid4_str(), group_id=group_id,
                                  root_id=body.options.get("root_id"))
        chains._strip_chord_header_links(body)
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
        header = groups.group([maybe_signature(t, app=self._app).clone() for t in self.tasks],
                       app=self.app)
        with allow_join_result():
            values = header.apply(args, kwargs).get(propagate=propagate)
        return maybe_signature(body, app=self._app).apply((values,))

    def __repr__(self) -> str:
        if self.body is None:
            return f"<chord without body: {self.tasks!r}>"
        return f"%{self.body.reprcall(list(self.tasks))}" if not isinstance(self.body, chains._chain) \
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
        if isinstance(body, groups.group) and not body.tasks:
            body.append_to_list_option("link", callback)
        else:
            body.link(callback)
    for errback in _listed(options.pop("link_error", None)):
        errback = maybe_signature(errback, app=body._app)
        if isinstance(body, groups.group):
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
        if isinstance(task, _chord) and chains._chain_led_by_task(task.body):
            pending.extendleft(reversed(task.unroll_body()))
        else:
            out.append(task)
    return out
