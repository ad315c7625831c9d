"""The result backend contract and the logic every backend shares (meta, exceptions)."""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import importlib
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from .. import states
from ..exceptions import DecodeError, ImproperlyConfigured, TimeoutError
from ..messaging import serialization
from ..transport.embedded import Wakeup
from ..transport.registry import load_class, scheme_of
from ..utils.portal import Portal
from .groups import GroupsAndChords

__all__ = ["BACKENDS", "Conf", "ResultBackend", "backend_for_url"]

T = TypeVar("T")

#: scheme -> "module:Class" (relative to this package).
BACKENDS: dict[str, str] = {
    "redis": ".redis:RedisBackend",
    "rediss": ".redis:RedisBackend",
    "valkey": ".redis:RedisBackend",
    "valkeys": ".redis:RedisBackend",
    "db+sqlite": ".database:DatabaseBackend",
    "cache+memory": ".memory:MemoryBackend",
    "file": ".filesystem:FilesystemBackend",
    # django-celery-results' alias, no "://": rows of its tables through Django's ORM.
    "django-db": ".django:DjangoBackend",
    "rpc": ".rpc:RPCBackend",
}

#: django-celery-results' cache backend: not built (docs/django.md).
_DJANGO_CACHE_ERROR = (
    "result_backend {url!r} (django-celery-results' Django-cache backend) is not supported: "
    "use 'django-db' (its database tables, docs/django.md) or redis://")
#: Every other ``db+<SQLAlchemy URL>`` (db+postgresql://, db+mysql+pymysql://, ...).
SQL_BACKEND = ".sql:SQLBackend"

_SAFE_MODULES = {"builtins", "exceptions", "celery.exceptions"}


class Conf(Protocol):
    """What a backend reads of the settings (an app's ``conf``): reads by name."""

    def __getitem__(self, key: str) -> Any: ...

    def get(self, key: str, default: Any = None) -> Any: ...


def _nothing_published() -> None:
    """The default ``confirm_published``: a backend made on its own sent no messages."""


class ResultBackend(GroupsAndChords):
    """Base of every result backend.

    Subclasses implement the storage coroutines (``_aset_many``, ``aget_raw``, ``adelete``,
    ``await_ready``); everything else (meta layout, encoding, exception round-trips, the
    sync front end through the app's portal) lives here so that all backends agree.

    Thread-safety: every method may be called from any thread; coroutines may be awaited on
    any event loop (a backend keeps per-loop connections). Sync methods run their coroutine
    on the app's portal loop, so they also work from inside a running event loop.
    """

    #: Key prefix for task results, as upstream Celery names them.
    task_keyprefix = "celery-task-meta-"

    def __init__(self, conf: Conf, url: str | None = None, *, portal: Portal | None = None,
                 confirm_published: Callable[[], None] | None = None, **options: Any) -> None:
        """Args:
            conf: the settings (``app.conf``).
            url: the backend's URL.
            portal: the event loop that runs this backend's coroutines for sync callers
                (the app's); a backend made without one starts its own when first needed.
            confirm_published: called before a sync wait, so that a message the broker
                refused raises instead of a timeout (the app's ``_confirm_published``).
        """
        self.conf = conf
        self.url = url
        #: Backend-specific options given to the constructor (beside the settings).
        self.options = options
        self._portal = portal
        self._owns_portal = portal is None
        # _portal_lock guards making our own portal (first sync call, from any thread).
        self._portal_lock = threading.Lock()
        self.confirm_published = confirm_published or _nothing_published
        self.serializer = conf["result_serializer"]
        self.accept = serialization.accept_set(conf["result_accept_content"] or conf["accept_content"])
        expires = conf["result_expires"]
        if isinstance(expires, dt.timedelta):
            expires = expires.total_seconds()
        self.expires: float | None = float(expires) if expires else None
        self.extended = bool(conf["result_extended"])

    @property
    def portal(self) -> Portal:
        """The loop that runs coroutines for sync callers (see ``__init__``)."""
        portal = self._portal
        if portal is None:
            with self._portal_lock:
                if self._portal is None:
                    self._portal = Portal(f"celery-portal-{type(self).__name__}")
                portal = self._portal
        return portal

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal loop, blocking the calling thread."""
        return self.portal.call(coro)

    def _stop_own_portal(self) -> None:
        """Stop the portal this backend started itself, if any (``close``)."""
        if self._owns_portal:
            with self._portal_lock:
                portal, self._portal = self._portal, None
            if portal is not None:
                portal.stop(self.aclose())

    # -- keys -----------------------------------------------------------------------------

    def get_key_for_task(self, task_id: str) -> str:
        return f"{self.task_keyprefix}{task_id}"

    # -- meta -----------------------------------------------------------------------------

    def prepare_meta(
        self,
        task_id: str,
        state: str,
        result: Any = None,
        traceback: str | None = None,
        request: Any = None,
    ) -> dict[str, Any]:
        """The meta mapping upstream Celery stores for a task, in upstream's key order."""
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            result = self.prepare_exception(result)
        date_done = dt.datetime.now(dt.UTC).isoformat() if state in states.READY_STATES else None
        meta: dict[str, Any] = {
            "status": state,
            "result": result,
            "traceback": traceback,
            # Upstream writes null without a request, else each child's as_tuple().
            "children": None if request is None else [
                c.as_tuple() if hasattr(c, "as_tuple") else c
                for c in getattr(request, "children", None) or ()
            ],
            "date_done": date_done,
        }
        if request is not None:
            if getattr(request, "group", None):
                meta["group_id"] = request.group
            if getattr(request, "parent_id", None):
                meta["parent_id"] = request.parent_id
            if self.extended:
                delivery_info = getattr(request, "delivery_info", None) or {}
                meta.update(
                    {
                        "name": getattr(request, "task", None),
                        "args": getattr(request, "args", None),
                        "kwargs": getattr(request, "kwargs", None),
                        "worker": getattr(request, "hostname", None),
                        "retries": getattr(request, "retries", None),
                        "queue": delivery_info.get("routing_key"),
                    }
                )
                stamps = getattr(request, "stamps", None)
                if stamps:  # as upstream: the stamp names, then each stamp as a key
                    meta["stamped_headers"] = getattr(request, "stamped_headers", None)
                    meta.update(stamps)
        meta["task_id"] = task_id
        return meta

    def encode(self, obj: Any) -> bytes:
        return serialization.dumps(obj, self.serializer)[0]

    def decode(self, payload: bytes | str) -> Any:
        """Decode a stored payload with ``result_serializer``, refused (ContentDisallowed)
        unless that serializer is in ``result_accept_content`` (else ``accept_content``), as
        upstream Celery refuses it."""
        content_type = serialization.serializer_by_name(self.serializer).content_type
        return serialization.loads(payload, content_type, None, accept=self.accept)

    def meta_from_payload(self, task_id: str, payload: bytes | str | None) -> dict[str, Any]:
        """Decode a stored meta payload; a missing one means PENDING, as in Celery.

        Raises:
            ContentDisallowed: the result serializer is not accepted.
            DecodeError: the payload does not decode to a meta mapping.
        """
        if payload is None:
            return {"status": states.PENDING, "result": None, "traceback": None,
                    "children": [], "date_done": None, "task_id": task_id}
        return self.meta_from_decoded(task_id, self.decode(payload))

    def meta_from_decoded(self, task_id: str, meta: Any) -> dict[str, Any]:
        """Check a decoded meta and turn its stored exception back into one.

        Raises:
            DecodeError: ``meta`` is not a result meta mapping.
        """
        if not isinstance(meta, dict) or not isinstance(meta.get("status"), str):
            raise DecodeError(f"The stored result of task {task_id} is not a result meta "
                              f"(a {type(meta).__name__} without a status)")
        if meta["status"] in states.EXCEPTION_STATES:
            meta["result"] = self.exception_to_python(meta.get("result"))
        return meta

    # -- exceptions -----------------------------------------------------------------------

    def prepare_exception(self, exc: BaseException) -> Any:
        """Serializable form of ``exc`` (upstream's exc_type/exc_message/exc_module)."""
        if self.serializer == "pickle":
            return exc
        cls = type(exc)
        return {
            "exc_type": cls.__qualname__,
            "exc_message": _serializable_args(exc.args),
            "exc_module": cls.__module__,
        }

    def exception_to_python(self, value: Any) -> Any:
        """Turn a stored exception back into an exception instance."""
        if isinstance(value, BaseException) or not isinstance(value, dict):
            return value
        exc_type = value.get("exc_type")
        if not exc_type or not isinstance(exc_type, str):
            return value
        module = value.get("exc_module") or "builtins"
        if not isinstance(module, str):
            module = "builtins"
        cls = _find_exception_class(module, exc_type)
        args = value.get("exc_message", ())
        if not isinstance(args, list | tuple):
            args = (args,)
        try:
            return cls(*args)
        except Exception:
            try:
                exc = cls.__new__(cls)
                exc.args = tuple(args)
            except Exception:  # a class that cannot even be made bare: a plain stand-in
                exc = Exception(exc_type, *args)
            return exc

    # -- storage (subclasses) -------------------------------------------------------------

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Store ``(task_id, encoded meta, state)`` items and wake their waiters."""
        raise NotImplementedError

    def store_now(self, task_id: str, payload: bytes, state: str) -> bool:
        """Store one result on the calling thread, blocking (a worker's executor thread, see
        worker/results.py); False if this backend cannot, and the caller queues it for
        ``_aset_many`` instead. Raises what the write raised."""
        return False

    async def aget_raw(self, task_id: str) -> bytes | None:
        raise NotImplementedError

    async def adelete(self, task_id: str) -> None:
        raise NotImplementedError

    async def adelete_many(self, task_ids: Sequence[str]) -> None:
        """Forget several results (backends override this with few round trips; here, at
        most 64 ``adelete`` at a time)."""
        gate = asyncio.Semaphore(64)

        async def one(task_id: str) -> None:
            async with gate:
                await self.adelete(task_id)

        await asyncio.gather(*(one(task_id) for task_id in task_ids))

    async def await_ready(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        """Wait until the task is in a ready state and return its meta.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
        """
        raise NotImplementedError

    async def aget_many_raw(self, task_ids: Sequence[str]) -> dict[str, bytes | None]:
        """Stored payloads of several tasks (backends override this with one round trip)."""
        raws = await asyncio.gather(*(self.aget_raw(t) for t in task_ids))
        return dict(zip(task_ids, raws, strict=True))

    async def aget_many_meta(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metas of several tasks (PENDING for those not stored), read together."""
        raws = await self.aget_many_raw(task_ids)
        return {tid: self.meta_from_payload(tid, raws.get(tid)) for tid in task_ids}

    def get_many_meta(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``aget_many_meta`` for sync callers (blocking)."""
        return self._call(self.aget_many_meta(task_ids))

    async def _poll_ready(self, task_id: str, timeout: float | None, wakeup: Wakeup,
                          first: float = 0.001, longest: float = 0.05) -> dict[str, Any]:
        """``await_ready`` for backends without server push (embedded ones): see polling.py.

        ``wakeup`` is notified by writes in this process; other processes' writes are seen
        within ``longest`` seconds.
        """
        from .polling import poller_for

        # One direct read first: a result already stored (the usual get() after the work is
        # done) is answered without waiting for the poller's next round; with a timeout of 0
        # that read is all there is, as on Redis.
        meta = await self.aget_task_meta(task_id)
        if meta["status"] in states.READY_STATES:
            return meta
        try:
            if timeout is not None and timeout <= 0:
                raise builtins.TimeoutError
            async with asyncio.timeout(timeout):
                return await poller_for(self, wakeup, first, longest).wait(task_id)
        except builtins.TimeoutError:
            raise TimeoutError("The operation timed out.") from None

    def ensure_chords_allowed(self) -> None:
        """Raise if this backend cannot run chords (DisabledBackend: no backend at all)."""

    #: False while this backend must prepare before the process sends its first task (the
    #: ``rpc://`` backend declares its reply queue, so that no reply is sent to a queue
    #: that does not exist yet); the app then calls ``prepare_sender`` before publishing.
    sender_ready = True

    def prepare_sender(self) -> None:
        """Get ready for replies to the tasks this process is about to send (any thread,
        blocking; called by the app while ``sender_ready`` is False)."""

    async def aprepare_sender(self) -> None:
        """``prepare_sender`` on the running event loop."""

    def on_sent(self, result: Any) -> None:
        """A task whose result is stored was just sent from this process (any thread).

        Backends that push results subscribe to it here; the others need nothing.
        """

    async def ping(self) -> None:
        """Raise ConnectionLost if the backend cannot be reached."""

    async def aclose(self) -> None:
        """Release the running loop's connections."""

    def close(self) -> None:
        """Release everything; idempotent. Subclasses release their own resources, then
        call this (it stops the portal the backend started itself, if any)."""
        self._stop_own_portal()

    # -- async front ----------------------------------------------------------------------

    async def astore_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Store several prepared metas in as few round trips as possible."""
        if items:
            await self._aset_many([(tid, self.encode(meta), meta["status"]) for tid, meta in items])

    async def astore_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> None:
        await self.astore_many([(task_id, self.prepare_meta(task_id, state, result, traceback, request))])

    async def aget_task_meta(self, task_id: str) -> dict[str, Any]:
        return self.meta_from_payload(task_id, await self.aget_raw(task_id))

    async def aforget(self, task_id: str) -> None:
        await self.adelete(task_id)

    # -- sync front (through the app's portal loop) ---------------------------------------

    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None
    ) -> None:
        self._call(self.astore_result(task_id, result, state, traceback, request))

    def get_task_meta(self, task_id: str) -> dict[str, Any]:
        return self._call(self.aget_task_meta(task_id))

    def wait_for(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """``await_ready`` for sync callers. This process's pipelined publishes are
        confirmed first, so a message the broker refused raises instead of a timeout."""
        self.confirm_published()
        return self._call(self.await_ready(task_id, timeout))

    def forget(self, task_id: str) -> None:
        self._call(self.adelete(task_id))


def _serializable_args(args: tuple) -> list[Any]:
    out = []
    for arg in args:
        try:
            serialization.json_dumps(arg)
            out.append(arg)
        except (TypeError, ValueError):
            out.append(repr(arg))
    return out


def _find_exception_class(module: str, name: str) -> type[BaseException]:
    """The exception class ``module.name``; a stand-in subclass when it can't be found.

    Only classes that really are exceptions are used; a module is imported only if it is
    already loaded or is a known-safe one, so a result can't make us import arbitrary code.
    """
    mod = sys.modules.get(module)
    if mod is None and module in _SAFE_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            mod = None
    obj: Any = mod
    for part in name.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    if obj is None and module in ("builtins", "exceptions"):
        obj = getattr(builtins, name, None)
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return type(name.rpartition(".")[2], (Exception,), {"__module__": module})


class DisabledBackend(ResultBackend):
    """Used when no result backend is configured: storing is a no-op, reading is an error."""

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        return None

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "No result backend is configured. Please see the documentation for more "
            "information (set result_backend or pass backend= to Celery())."
        )

    async def aget_raw(self, task_id: str) -> bytes | None:
        return self._refuse()

    async def adelete(self, task_id: str) -> None:
        return self._refuse()

    async def await_ready(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        return self._refuse()

    def ensure_chords_allowed(self) -> None:
        raise NotImplementedError(
            "Starting chords requires a result backend to be configured, but none have been "
            "configured (set result_backend or pass backend= to Celery()).")

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        return self._refuse()

    async def _aget_group(self, group_id: str) -> bytes | None:
        return self._refuse()

    async def _adelete_group(self, group_id: str) -> None:
        return self._refuse()


def backend_for_url(url: str | None, conf: Conf, **options: Any) -> ResultBackend:
    """A backend instance for ``url`` (``None`` or ``"disabled"`` gives DisabledBackend);
    ``conf`` and ``options`` (``portal``, ``confirm_published``, ...) go to its constructor."""
    if not url or url == "disabled":
        return DisabledBackend(conf, None, **options)
    if url.lower() == "django-db":
        return load_class(BACKENDS["django-db"], __package__)(conf, url, **options)
    if url.split("://")[0].lower() == "django-cache":
        raise ImproperlyConfigured(_DJANGO_CACHE_ERROR.format(url=url))
    if url in BACKENDS or "://" not in url:
        raise ImproperlyConfigured(
            f"Invalid result backend URL {url!r}; known schemes: {', '.join(sorted(BACKENDS))}"
        )
    family, plus, _ = url.partition("://")[0].lower().partition("+")
    if plus and family == "db" and url.split("://")[0].lower() not in BACKENDS:
        # Any SQLAlchemy URL after db+ (db+sqlite:// stays the stdlib SQLite backend).
        cls = load_class(SQL_BACKEND, __package__)
        return cls(conf, url, **options)
    if plus and family == "cache" and url.split("://")[0].lower() not in BACKENDS:
        raise ImproperlyConfigured(
            f"Unsupported result backend URL {url!r}: of Celery's cache+ backends only "
            "cache+memory:// is built in (or use redis://, valkey://, db+..., file://)"
        )
    scheme = scheme_of(url, "result backend", BACKENDS)
    cls = load_class(BACKENDS[scheme], __package__)
    return cls(conf, url, **options)
