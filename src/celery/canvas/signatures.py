"""Signature: one task call (name, args, kwargs, options) as data, laid out as Celery's dict.

A signature is a ``dict`` with the keys ``task``, ``args``, ``kwargs``, ``options``,
``subtask_type`` and ``immutable``, so it serializes as it is (JSON, msgpack, pickle) and
upstream Celery reads ours and we read its. ``subtask_type`` names the kind (None for a
task, ``"chain"``, ``"group"``, ``"chord"``, ``"chunks"``, ``"xmap"``, ``"xstarmap"``);
``signature(d)`` turns a dict back into the right class.

Sending goes through a ``Dispatch`` (canvas/dispatch.py): building every message of a
canvas is pure, then the backend writes and the publishes happen together, blocking
(``apply_async``) or on the running event loop (``aapply_async``). Signatures are plain
data: not shared between threads by the library (``clone()`` before handing one over).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..exceptions import InvalidSignature
from ..messaging.protocol import uuid4_str

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..result import AsyncResult
    from .dispatch import Dispatch

__all__ = ["Signature", "maybe_signature", "signature"]

S = TypeVar("S", bound="Signature")

#: Options a ``_merge`` never overwrites once set (Celery's rule: a signature frozen into a
#: group keeps that group).
_IMMUTABLE_OPTIONS = frozenset({"group_id", "stamped_headers"})


def _item(path: str, doc: str) -> property:
    """A property reading and writing ``self[a][b]`` for ``path`` ``"a.b"``."""
    first, _, second = path.partition(".")

    def get(self: dict[str, Any]) -> Any:
        value = self.get(first)
        if second:
            return value.get(second) if isinstance(value, Mapping) else None
        return value

    def set_(self: dict[str, Any], value: Any) -> None:
        if second:
            self.setdefault(first, {})[second] = value
        else:
            self[first] = value

    return property(get, set_, doc=doc)


class Signature(dict):
    """A task call that can be stored, sent in a message, and applied later.

    ``Signature("proj.add", (2, 2), {}, {"countdown": 10})``, or ``add.s(2, 2)``. Partial
    application: ``sig.delay(x)`` prepends ``x`` to the stored args (unless ``immutable``,
    ``add.si(...)``); keyword arguments and options merge over the stored ones.
    """

    #: subtask_type -> class, for ``from_dict`` (the canvas kinds register themselves).
    TYPES: ClassVar[dict[str, type[Signature]]] = {}
    _app: Celery | None = None
    _type: Any = None

    @classmethod
    def register_type(cls, name: str | None = None) -> Callable[[type[S]], type[S]]:
        """Class decorator: ``from_dict`` makes this class for ``subtask_type == name``."""

        def register(subclass: type[S]) -> type[S]:
            cls.TYPES[name or subclass.__name__] = subclass
            return subclass

        return register

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        """The signature of the right kind for a dict (its ``subtask_type``).

        Raises:
            InvalidSignature: not a signature dict (no task name, an unknown kind, ...).
        """
        if not isinstance(d, Mapping):
            raise InvalidSignature(f"a signature must be a mapping, not {type(d).__name__}")
        kind = d.get("subtask_type")
        if kind:
            target = cls.TYPES.get(kind) if isinstance(kind, str) else None
            if target is None:
                raise InvalidSignature(f"unknown signature type {kind!r} "
                                       f"(known: {', '.join(sorted(cls.TYPES))})")
            if target is not cls:
                try:
                    return target.from_dict(d, app=app)
                except InvalidSignature:
                    raise
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise InvalidSignature(f"malformed {kind} signature: {exc!r}") from exc
        return Signature(d, app=app)

    def __init__(self, task: Any = None, args: Sequence[Any] | None = None,
                 kwargs: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                 type: Any = None, subtask_type: str | None = None, immutable: bool = False,
                 app: Celery | None = None, **ex: Any) -> None:
        self._app = app
        if isinstance(task, Mapping):
            super().__init__(task)
            _check(self)
            return
        name = getattr(task, "name", task)
        if name is not task:
            self._type = task
            if app is None:
                self._app = getattr(task, "_app", None)
        super().__init__(task=name, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                         options=dict(options or {}, **ex), subtask_type=subtask_type,
                         immutable=bool(immutable))

    task = _item("task", "Name of the task.")
    args = _item("args", "Positional arguments.")
    kwargs = _item("kwargs", "Keyword arguments.")
    options = _item("options", "Execution options (queue, countdown, link, ...).")
    subtask_type = _item("subtask_type", "Kind of signature: None for a task.")
    immutable = _item("immutable", "True: partial arguments are not added when applied.")
    id = _item("options.task_id", "The task id, once frozen.")
    parent_id = _item("options.parent_id", "The parent task's id.")
    root_id = _item("options.root_id", "The id of the first task of the workflow.")

    @property
    def name(self) -> str:
        return self.task

    @property
    def app(self) -> Celery:
        if self._app is not None:
            return self._app
        from .._state import get_current_app

        return get_current_app()

    @property
    def type(self) -> Any:
        """The registered Task (raises NotRegistered when this process does not know it)."""
        return self._type if self._type is not None else self.app.tasks[self.task]

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        return self.app.AsyncResult(task_id, task_name=self.task)

    # -- arguments and options -------------------------------------------------------------

    def _merge(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None,
               force: bool = False) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """Partial arguments merged as Celery merges them: ``args`` go first, ``kwargs`` and
        ``options`` over the stored ones (never ``group_id`` once set); an immutable
        signature keeps its own arguments unless ``force``."""
        own = self.options
        if options:
            opts = {**own, **{k: v for k, v in options.items()
                              if k not in _IMMUTABLE_OPTIONS or k not in own}}
        else:
            opts = dict(own)
        if self.immutable and not force:
            return tuple(self.args), dict(self.kwargs), opts
        merged_args = tuple(args) + tuple(self.args) if args else tuple(self.args)
        merged_kwargs = {**self.kwargs, **kwargs} if kwargs else dict(self.kwargs)
        return merged_args, merged_kwargs, opts

    def clone(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Signature:
        """A copy (options deep-copied, but for a ``chord`` body: canvases share that, as
        they never change it once set), with partial arguments and options merged in."""
        a, k, o = self._merge(args, kwargs, options)
        body = o.pop("chord", None)
        o = copy.deepcopy(o)
        if body is not None:
            o["chord"] = body
        fields = {"task": self.task, "args": a, "kwargs": k, "options": o,
                  "subtask_type": self.subtask_type, "immutable": self.immutable}
        if type(self) is Signature:  # the common case: no need to check what it came from
            sig = Signature.__new__(Signature)
            dict.__init__(sig, fields)
            sig._app = self._app
        else:
            sig = Signature.from_dict(fields, app=self._app)
        sig._type = self._type
        return sig

    partial = clone

    def replace(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                options: Mapping[str, Any] | None = None) -> Signature:
        """A copy with ``args``, ``kwargs`` or ``options`` replaced (not merged)."""
        sig = self.clone()
        if args is not None:
            sig.args = tuple(args)
        if kwargs is not None:
            sig.kwargs = dict(kwargs)
        if options is not None:
            sig.options = dict(options)
        return sig

    def set(self: S, immutable: bool | None = None, **options: Any) -> S:
        """Update the options in place (``sig.set(queue="q", countdown=10)``); returns self."""
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def freeze(self, _id: str | None = None, group_id: str | None = None, chord: Any = None,
               root_id: str | None = None, parent_id: str | None = None,
               group_index: int | None = None) -> Any:
        """Fix the task id (and the family ids given) in the options now, so that the
        result is known before sending; returns that result."""
        opts = self.options
        task_id = opts.get("task_id")
        if not task_id:
            task_id = opts["task_id"] = _id or uuid4_str()
        if root_id:
            opts["root_id"] = root_id
        if parent_id:
            opts["parent_id"] = parent_id
        opts.setdefault("reply_to", self.app.oid)
        if group_id and "group_id" not in opts:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        return self.AsyncResult(task_id)

    # -- callbacks ---------------------------------------------------------------------------

    def _list_option(self, key: str) -> list[Any]:
        items = self.options.get(key)
        if items is None:
            items = self.options[key] = []
        elif not isinstance(items, list):
            items = self.options[key] = list(items) if isinstance(items, tuple) else [items]
        return items

    def append_to_list_option(self, key: str, value: Any) -> Any:
        items = self._list_option(key)
        if value not in items:
            items.append(value)
        return value

    def extend_list_option(self, key: str, value: Any) -> None:
        items = self._list_option(key)
        items.extend(value if isinstance(value, list | tuple) else [value])

    def link(self, callback: Any) -> Any:
        """Apply ``callback`` with this task's return value when it succeeds."""
        return self.append_to_list_option("link", callback)

    def link_error(self, errback: Any) -> Any:
        """Apply ``errback`` when this task fails: with ``(request, exc, traceback)`` if
        its function takes more than one argument, else (old style) with the task id."""
        return self.append_to_list_option("link_error", errback)

    def on_error(self: S, errback: Any) -> S:
        """``link_error`` that returns the signature (for chaining calls)."""
        self.link_error(errback)
        return self

    def flatten_links(self) -> list[Signature]:
        """This signature and every callback linked under it, depth first."""
        out: list[Signature] = [self]
        for link in self.options.get("link") or ():
            out.extend(maybe_signature(link, app=self._app).flatten_links())
        return out

    # -- composing -----------------------------------------------------------------------------

    def __or__(self, other: Any) -> Any:
        from .chains import compose

        return compose(self, other)

    def __ior__(self, other: Any) -> Any:
        return self.__or__(other)

    # -- applying ------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function here and now (no message)."""
        a, k, _ = self._merge(args, kwargs)
        return self.type(*a, **k)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with partial arguments; blocking, any thread."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> Any:
        """``delay`` for the running event loop (never blocks it)."""
        return await self.aapply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:
        """Send it: partial ``args``/``kwargs`` and ``options`` merged into the stored ones.
        Blocking (one broker round trip, or a pipelined write on Redis); any thread.

        A single task goes through its Task's ``apply_async`` (an override is honoured, and
        a plain one takes the fast path of ``delay()``); a canvas through a Dispatch."""
        options = _given(options)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        if type(self)._collect is Signature._collect:
            a, k, o = self._merge(args, kwargs, options)
            task = self.app.tasks.get(self.task)
            if task is not None:
                return task.apply_async(a, k, **o)
            return self.app.send_task(self.task, a, k, **o)
        from .dispatch import Dispatch

        dispatch = Dispatch(self.app)
        result = self._collect(dispatch, args, kwargs, options)
        dispatch.send()
        return result

    async def aapply_async(self, args: Sequence[Any] | None = None,
                           kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """``apply_async`` for the running event loop (never blocks it)."""
        options = _given(options)
        if self.app.conf.task_always_eager:
            return await self.aapply(args, kwargs, **options)
        if type(self)._collect is Signature._collect:
            a, k, o = self._merge(args, kwargs, options)
            task = self.app.tasks.get(self.task)
            if task is not None:
                return await task.aapply_async(a, k, **o)
            return await self.app.asend_task(self.task, a, k, **o)
        from .dispatch import Dispatch

        dispatch = Dispatch(self.app)
        result = self._collect(dispatch, args, kwargs, options)
        await dispatch.asend()
        return result

    def _collect(self, dispatch: Dispatch, args: Sequence[Any] | None,
                 kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]) -> Any:
        """Add what sending this does to ``dispatch`` (no I/O); the result to hand back.
        Each kind of canvas overrides it; ``apply_async``/``aapply_async`` then send."""
        a, k, o = self._merge(args, kwargs, options)
        return dispatch.add_task(self.task, a, k, o)

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:
        """Run it in this process now (eager); returns an EagerResult."""
        a, k, o = self._merge(args, kwargs, _given(options))
        return self.type.apply(a, k, **o)

    async def aapply(self, args: Sequence[Any] | None = None,
                     kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """``apply`` for the running event loop (an ``async def`` task is awaited here)."""
        a, k, o = self._merge(args, kwargs, _given(options))
        return await self.type.aapply(a, k, **o)

    def __invert__(self) -> Any:
        """``~sig``: send it and wait for its result."""
        return self.apply_async().get()

    # -- dict behaviour --------------------------------------------------------------------------

    def reprcall(self, *args: Any, **kwargs: Any) -> str:
        a, k, _ = self._merge(args, kwargs, force=True)
        shown = [repr(v) for v in a] + [f"{key}={value!r}" for key, value in k.items()]
        return f"{self.task}({', '.join(shown)})"

    def __repr__(self) -> str:
        return self.reprcall()

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        clone = Signature.from_dict(copy.deepcopy(dict(self), memo), app=self._app)
        clone._type = self._type
        return clone

    def __reduce__(self) -> Any:
        return signature, (dict(self),)

    def __json__(self) -> dict[str, Any]:
        return dict(self)


def _given(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options a caller gave, without those set to None (Celery's rule)."""
    return {k: v for k, v in options.items() if v is not None}


def _check(sig: Signature) -> None:
    """Raise InvalidSignature unless a dict made into a Signature has a usable shape."""
    name = sig.get("task")
    if not isinstance(name, str) or not name:
        raise InvalidSignature(f"a signature needs a task name, got {name!r}")
    args, kwargs, options = sig.get("args", ()), sig.get("kwargs", {}), sig.get("options", {})
    if args is None:
        sig["args"] = args = ()
    if kwargs is None:
        sig["kwargs"] = kwargs = {}
    if options is None:
        sig["options"] = options = {}
    if not isinstance(args, list | tuple):
        raise InvalidSignature(f"signature of {name!r}: args must be a list, not {type(args).__name__}")
    if not isinstance(kwargs, Mapping) or not isinstance(options, Mapping):
        raise InvalidSignature(f"signature of {name!r}: kwargs and options must be mappings")
    sig.setdefault("args", args)
    sig.setdefault("kwargs", kwargs)
    sig.setdefault("options", options)
    sig.setdefault("subtask_type", None)
    sig.setdefault("immutable", False)


def _tasks_of(value: Any) -> list[Any]:
    """A list of members: a list/tuple as given, a generator (or other iterable) drained."""
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping) or isinstance(value, str | bytes):
        return [value]
    return list(value)



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


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """A Signature from a dict (a copy, of the right kind), a task, or a task name.

    Raises:
        InvalidSignature: a dict that is not a signature.
    """
    app = kwargs.get("app")
    if isinstance(varies, Mapping):
        if isinstance(varies, Signature):
            return varies.clone()
        return Signature.from_dict(varies, app=app)
    return Signature(varies, *args, **kwargs)


def maybe_signature(d: Any, app: Celery | None = None, clone: bool = False) -> Any:
    """``d`` as a Signature (made from a dict, or cloned), None stays None; with ``app``
    the signature is bound to that app.

    Raises:
        InvalidSignature: ``d`` is neither None, a Signature nor a signature dict.
    """
    if d is None:
        return None
    if isinstance(d, Signature):
        if clone:
            d = d.clone()
    elif isinstance(d, Mapping):
        d = Signature.from_dict(d, app=app)
    else:
        raise InvalidSignature(f"expected a signature, got {type(d).__name__}: {d!r:.100}")
    if app is not None:
        d._app = app
    return d


def signatures(items: Iterable[Any], app: Celery | None = None) -> list[Signature]:
    """Each of ``items`` as a Signature (``maybe_signature``); InvalidSignature if one is not."""
    if isinstance(items, Mapping) or isinstance(items, str | bytes):
        raise InvalidSignature(f"expected a list of signatures, got {type(items).__name__}")
    return [maybe_signature(item, app=app) for item in items]


subtask = signature
maybe_subtask = maybe_signature
