"""The Celery application: configuration, task registry, sending tasks, results."""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import logging
import sys
import threading
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import _state
from .._state import current_request, current_task_var
from ..exceptions import ImproperlyConfigured
from ..messaging.protocol import Message, build_task_message, uuid4_str
from ..signals import Signal
from ..utils.clocks import LamportClock
from ..utils.portal import Portal
from . import builtins as _builtins  # noqa: F401 - every app gets the built-in tasks
from .config import Settings, import_object
from .registry import TaskRegistry
from .routes import Router
from .task import Task, add_autoretry
from .template import Template, plain_send

if TYPE_CHECKING:
    from ..backends.base import ResultBackend
    from ..result import AsyncResult
    from ..transport.base import Transport
    from .connection import BrokerConnection
    from .control import Control
    from .events import Events
    from .loader import Loader

__all__ = ["DEFAULT_BROKER_URL", "Celery", "gen_task_name"]

logger = logging.getLogger(__name__)

#: The broker when none is configured: the embedded SQLite broker, in a file of the working
#: directory (so a producer and a worker started in the same project folder share it).
#: Upstream Celery's default is a RabbitMQ server on localhost; ours needs no server.
DEFAULT_BROKER_URL = "sqlite:///celery-broker.db"

_TASK_OPTION_NAMES = (
    "serializer", "queue", "routing_key", "exchange", "priority", "ignore_result", "acks_late",
    "track_started", "max_retries", "default_retry_delay", "time_limit", "soft_time_limit",
    "rate_limit", "expires", "store_errors_even_if_ignored", "typing",
    "autoretry_for", "dont_autoretry_for", "retry_kwargs", "retry_backoff", "retry_backoff_max",
    "retry_jitter", "reject_on_worker_lost", "acks_on_failure_or_timeout", "send_events",
    "resultrepr_maxsize",
)


def gen_task_name(app: Celery, name: str, module: str) -> str:
    """Celery's default task name: ``module.function``; ``__main__`` becomes the app's main."""
    if module == "__main__" and app.main:
        module = app.main
    return f"{module}.{name}"


class Celery:
    """A Celery application.

    Configure it (``conf``, ``config_from_object``) and define tasks before starting threads
    that use it; after that every method is safe from any thread. Lazily created parts
    (transport, backend, portal) are made once under ``_setup_lock``.
    """

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        *,
        include: Iterable[str] | None = None,
        config_source: Any = None,
        namespace: str | None = None,
        set_as_current: bool = True,
        task_cls: type[Task] | str | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        self.namespace = namespace
        if config_source is not None:
            self.config_from_object(config_source, namespace=namespace)
        self.conf.update(settings)
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        if include:
            self.conf.include = tuple(self.conf.include) + tuple(include)
        self.task_cls: type[Task] = (import_object(task_cls) if isinstance(task_cls, str)
                                     else task_cls or Task)
        self._tasks = TaskRegistry()
        self._pending_autodiscover: list[tuple[Any, str]] = []
        self._finalized = False
        # Guards lazy creation of the transport, backend, portal, router and finalize().
        self._setup_lock = threading.RLock()
        self._transport: Transport | None = None
        self._backend: ResultBackend | None = None
        #: This app's id (upstream's ``app.oid``): the ``reply_to`` of the tasks it sends,
        #: the name of its rpc:// reply queue, so two apps in one process never share one.
        self.oid = uuid4_str()
        self._portal: Portal | None = None
        self._control: Control | None = None
        self._router: Router | None = None
        #: The app's Lamport clock: moved past every event clock an ``EventReceiver`` sees.
        self.clock = LamportClock()
        #: ``app.GroupResult``: made on first use (an assignment; a race makes two alike).
        self._group_result_cls: Any = None
        #: The dispatcher of ``task-sent`` events: made on first use (an assignment; a race
        #: makes two alike, both usable).
        self._sent_dispatcher: Any = None
        #: Each task's plain-send template and what it was made from (app/template.py).
        self._templates: dict[str, tuple[tuple[Any, ...], Template | None]] = {}
        #: Celery's app signals: ``on_configure`` and ``on_after_configure`` (``source``: the
        #: settings) are sent when the app is finalized, before ``imports``/``include``
        #: are imported; ``on_after_finalize`` once they are (worker and beat start, or the
        #: first ``app.tasks``). Connect to them where the app is made.
        self.on_configure = Signal("app.on_configure")
        self.on_after_configure = Signal("app.on_after_configure")
        self.on_after_finalize = Signal("app.on_after_finalize")
        if set_as_current:
            _state.set_default_app(self)
        _state.register_app(self)

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'} at {id(self):#x}>"

    # -- configuration -------------------------------------------------------------------

    def config_from_object(self, obj: Any, silent: bool = False, force: bool = True,
                           namespace: str | None = None) -> None:
        """Read settings from a module (or its dotted name), a class, an object or a dict."""
        if isinstance(obj, str):
            try:
                obj = import_object(obj)
            except ImproperlyConfigured:
                if silent:
                    return
                raise
        self.conf.load_object(obj, namespace=namespace or self.namespace)
        self._reset_lazy()

    def _reset_lazy(self) -> None:
        with self._setup_lock:
            self._router = None
            self._templates = {}

    def autodiscover_tasks(self, packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
                           related_name: str = "tasks", force: bool = False) -> None:
        """Import ``<package>.<related_name>`` for each package (now if ``force``, else when
        the app is finalized: first access to ``app.tasks`` or worker start)."""
        self._pending_autodiscover.append((packages, related_name))
        if force or self._finalized:
            self._run_autodiscover()

    def _run_autodiscover(self) -> None:
        pending, self._pending_autodiscover = self._pending_autodiscover, []
        for packages, related_name in pending:
            pkgs = packages() if callable(packages) else packages
            for pkg in pkgs or self.conf.imports or ():
                module = f"{pkg}.{related_name}" if related_name else pkg
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as exc:
                    # As Celery: a package without the module, or a missing package, is skipped.
                    if exc.name not in (module, pkg):
                        raise

    def finalize(self) -> None:
        """Import ``imports``/``include`` modules and run pending autodiscovery; once."""
        with self._setup_lock:
            if self._finalized:
                return
            self._finalized = True
            self.on_configure.send(sender=self)
            self.on_after_configure.send(sender=self, source=self.conf)
            for name in tuple(self.conf.imports or ()) + tuple(self.conf.include or ()):
                importlib.import_module(name)
            self._run_autodiscover()
            self.on_after_finalize.send(sender=self)

    def add_periodic_task(self, schedule: Any, sig: Any, args: Sequence[Any] = (),
                          kwargs: Mapping[str, Any] | None = None, name: str | None = None,
                          **opts: Any) -> str:
        """Add an entry to ``beat_schedule``: send ``sig`` (a signature, or a task) on
        ``schedule`` (seconds, timedelta, crontab, ...); ``opts`` are its send options.
        Returns the entry's name (``name``, else the signature's repr), as Celery."""
        from ..canvas import Signature

        if isinstance(sig, Signature):
            sig = sig.clone(args, kwargs)
        else:
            sig = self.signature(sig.name, args, kwargs)
        key = name or repr(sig)
        entries = dict(self.conf.beat_schedule or {})
        if name is None and key in entries:
            logger.warning("Periodic task key=%r shadowed a previous unnamed periodic task; "
                           "pass name= to add_periodic_task to silence this warning", key)
        entries[key] = {"schedule": schedule, "task": sig.name, "args": tuple(sig.args),
                        "kwargs": dict(sig.kwargs), "options": {**sig.options, **opts}}
        self.conf.beat_schedule = entries  # a new dict: the default one is shared
        return key

    @property
    def tasks(self) -> TaskRegistry:
        """Registered tasks (finalizes the app on first access)."""
        if not self._finalized:
            self.finalize()
        return self._tasks

    # -- tasks ---------------------------------------------------------------------------

    def task(self, *args: Any, **opts: Any) -> Any:
        """Decorator making a task from a function (``def`` or ``async def``).

        ``@app.task``, ``@app.task()`` and ``@app.task(name=..., bind=True, ...)`` all work.
        """
        if len(args) == 1 and callable(args[0]) and not opts:
            return self._task_from_fun(args[0])

        def decorator(fun: Callable[..., Any]) -> Task:
            return self._task_from_fun(fun, **opts)

        return decorator

    def _task_from_fun(self, fun: Callable[..., Any], name: str | None = None, base: type[Task] | None = None,
                       bind: bool = False, **options: Any) -> Task:
        name = name or gen_task_name(self, fun.__name__, fun.__module__)
        existing = self._tasks.get(name)
        if existing is not None and getattr(existing, "__wrapped__", None) is fun:
            return existing
        unknown = set(options) - set(_TASK_OPTION_NAMES) - {"shared", "pydantic"}
        if unknown:
            raise ImproperlyConfigured(f"Unknown task option(s) for {name!r}: {', '.join(sorted(unknown))}")
        attrs: dict[str, Any] = {
            "_app": self,
            "name": name,
            "run": fun if bind else staticmethod(fun),
            "_bound": bind,
            "is_async": inspect.iscoroutinefunction(fun),
            "__doc__": fun.__doc__,
            "__module__": fun.__module__,
            "__qualname__": getattr(fun, "__qualname__", fun.__name__),
            "__wrapped__": fun,
        }
        attrs.update({k: v for k, v in options.items() if k in _TASK_OPTION_NAMES})
        cls = type(fun.__name__, (base or self.task_cls,), attrs)
        task = cls()
        add_autoretry(task)
        self._tasks.register(task)
        return task

    def register_task(self, task: Task | type[Task]) -> Task:
        """Register a class-based task (an instance or a Task subclass)."""
        if isinstance(task, type):
            task = task()
        if task._app is None:
            task._app = self
        if not task.name:
            task.name = gen_task_name(self, type(task).__name__, type(task).__module__)
        add_autoretry(task)
        task.is_async = inspect.iscoroutinefunction(task.run)
        return self._tasks.register(task)

    # -- lazily made parts ---------------------------------------------------------------

    @property
    def portal(self) -> Portal:
        """The background event loop sync callers use to run coroutines."""
        if self._portal is None:
            with self._setup_lock:
                if self._portal is None:
                    self._portal = Portal(f"celery-portal-{self.main or 'app'}")
        return self._portal

    @property
    def control(self) -> Control:
        """Remote control of the workers (``app.control.revoke(...)``, ``.inspect()``)."""
        if self._control is None:
            with self._setup_lock:
                if self._control is None:
                    from .control import Control

                    self._control = Control(self)
        return self._control

    def bugreport(self) -> str:
        """Versions and URLs to paste into a bug report (Celery's ``app.bugreport()``;
        Flower's error page shows it). Passwords are masked."""
        import platform

        from .. import VERSION_BANNER
        from ..utils.text import mask_url

        return (f"software -> celery:{VERSION_BANNER} "
                f"py:{platform.python_version()} ({platform.python_implementation()})\n"
                f"platform -> system:{platform.system()} arch:{platform.machine()}\n"
                f"settings -> broker:{mask_url(self.broker_url)} "
                f"results:{mask_url(self.conf.result_backend) or 'disabled'}\n")

    @property
    def loader(self) -> Loader:
        """Celery's ``app.loader``: only ``import_default_modules()`` (app/loader.py)."""
        from .loader import Loader

        return Loader(self)

    def connection_for_read(self, url: str | None = None, **_ignored: Any) -> BrokerConnection:
        """A ``BrokerConnection`` naming the broker (``url`` or the app's): it opens nothing
        and is accepted, and ignored, by ``app.events.Receiver`` (app/connection.py)."""
        from .connection import BrokerConnection

        return BrokerConnection(url or self.broker_url)

    def connection(self, url: str | None = None, **_ignored: Any) -> BrokerConnection:
        """As ``connection_for_read`` (Celery's older name)."""
        return self.connection_for_read(url)

    @property
    def events(self) -> Events:
        """``app.events.Receiver(...)`` and ``app.events.State()`` (receiving events only)."""
        from .events import Events

        return Events(self)

    @property
    def transport(self) -> Transport:
        """Our client for the configured broker."""
        if self._transport is None:
            with self._setup_lock:
                if self._transport is None:
                    from ..transport.registry import transport_for_url

                    url = self.broker_url
                    amqp = url.split("://", 1)[0].lower() in ("amqp", "amqps", "pyamqp")
                    if self.conf.broker_use_ssl and not amqp:
                        raise ImproperlyConfigured(
                            "broker_use_ssl is not supported: put TLS in the broker URL "
                            "(rediss://...?ssl_cert_reqs=required, or amqps://)")
                    extra: dict[str, Any] = {}
                    if amqp:
                        from ..transport.amqp_mailbox import MailboxQueueSettings
                        from ..transport.amqp_topology import Topology

                        conf = self.conf
                        extra = dict(
                            topology=Topology.from_conf(conf), heartbeat=conf.broker_heartbeat,
                            use_ssl=conf.broker_use_ssl, portal=self.portal,
                            publish_retry=conf.task_publish_retry,
                            publish_retry_policy=conf.task_publish_retry_policy,
                            # the pidbox/event queue flags (amqp_mailbox.py)
                            mailbox_settings=MailboxQueueSettings.from_conf(conf))
                    self._transport = transport_for_url(
                        url,
                        transport_options=dict(self.conf.broker_transport_options or {}),
                        connection_timeout=self.conf.broker_connection_timeout,
                        max_connections=self.conf.broker_pool_limit,
                        **extra,
                    )
        return self._transport

    @property
    def broker_url(self) -> str:
        self.conf.apply_env()
        url = self.conf.broker_url
        if not url:
            url = self.conf.broker_url = DEFAULT_BROKER_URL
        return url

    @property
    def backend(self) -> ResultBackend:
        """The configured result backend (DisabledBackend when there is none)."""
        if self._backend is None:
            with self._setup_lock:
                if self._backend is None:
                    from ..backends.base import backend_for_url

                    self.conf.apply_env()
                    self._backend = backend_for_url(
                        self.conf.result_backend, self.conf, portal=self.portal,
                        confirm_published=self._confirm_published, reply_to=self.oid)
        return self._backend

    @property
    def router(self) -> Router:
        if self._router is None:
            with self._setup_lock:
                if self._router is None:
                    self._router = Router(self.conf.task_routes)
        return self._router

    # -- sending -------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        """The current time, aware, in UTC."""
        return dt.datetime.now(dt.UTC)

    @property
    def timezone(self) -> dt.tzinfo:
        """The ``timezone`` setting as a tzinfo; without one, UTC (or, with ``enable_utc``
        false, the machine's local zone), as Celery. Read on each access: cheap."""
        name = self.conf.timezone
        if name:
            if isinstance(name, dt.tzinfo):
                return name
            try:
                return zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ImproperlyConfigured(f"Unknown timezone setting {name!r}: {exc}") from None
        if self.conf.enable_utc:
            return dt.UTC
        local = dt.datetime.now().astimezone().tzinfo
        return local if local is not None else dt.UTC

    def _prepare(self, name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None,
                 task: Task | None, options: dict[str, Any]) -> tuple[Message, str]:
        """Build the message for one send (pure: no I/O), returning it with its task id.

        An option comes from ``options``, else the route, else the task's attribute, else
        the setting (``_pick``). On every ``delay()``'s path: lean on purpose.
        """
        conf = self.conf._data  # plain dict reads: Settings.__getattr__ costs a call each
        if args is not None and not isinstance(args, list | tuple):
            raise TypeError("task args must be a list or tuple")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError("task keyword arguments must be a mapping")
        get = options.get
        task_id = options.pop("task_id", None) or uuid4_str()
        route = (self.router.route(options.get("route_name") or name, args or (), kwargs or {},
                                   options, task=task)
                 if conf["task_routes"] else None)
        layers = (options, route, task) if route else (options, task)
        queue = _pick(layers, "queue", conf["task_default_queue"])
        if not isinstance(queue, str):
            queue = getattr(queue, "name", str(queue))
        routing_key = _pick(layers, "routing_key")  # a key given beside the queue (AMQP)
        countdown, eta = get("countdown"), get("eta")
        if countdown is not None:
            eta = self.now() + dt.timedelta(seconds=countdown)
        expires = _pick(layers, "expires")
        if isinstance(expires, int | float):
            expires = self.now() + dt.timedelta(seconds=expires)
        parent = current_request.get() if current_task_var.get() is not None else None
        # A retry passes its original's ids explicitly (None included), never the sender's.
        root_id = options["root_id"] if "root_id" in options else (parent.root_id if parent else None)
        parent_id = options["parent_id"] if "parent_id" in options else (parent.id if parent else None)
        message = build_task_message(
            name, args or (), kwargs or {},
            task_id=task_id,
            serializer=_pick(layers, "serializer", conf["task_serializer"]),
            queue=routing_key or queue,
            routed_queue=queue if routing_key else None,
            exchange=_pick(layers, "exchange", "") or "",
            priority=_pick(layers, "priority", conf["task_default_priority"]),
            reply_to=get("reply_to") or self.oid,
            callbacks=_sig_list(get("link")),
            errbacks=_sig_list(get("link_error")),
            chain=get("chain"),
            chord=get("chord"),
            eta=eta,
            expires=expires,
            retries=get("retries", 0),
            group_id=get("group_id"),
            group_index=get("group_index"),
            time_limit=_pick(layers, "time_limit", conf["task_time_limit"]),
            soft_time_limit=_pick(layers, "soft_time_limit", conf["task_soft_time_limit"]),
            root_id=root_id,
            parent_id=parent_id,
            shadow=get("shadow"),
            # Upstream sends null when a task is sent by name with no ignore_result option.
            ignore_result=(get("ignore_result") if task is None
                           else bool(_pick(layers, "ignore_result", conf["task_ignore_result"]))),
            argsrepr=get("argsrepr"),
            kwargsrepr=get("kwargsrepr"),
            replaced_task_nesting=get("replaced_task_nesting") or 0,
            extra=get("headers"),
        )
        return message, task_id

    def _confirm_published(self) -> None:
        """Wait until the broker answered this process's sync publishes, raising for one it
        refused. Only transports that pipeline ``publish`` (Redis) have ``confirm_published``;
        the others confirm each publish before it returns. Any thread."""
        confirm = getattr(self._transport, "confirm_published", None)
        if confirm is not None:
            confirm()

    def _confirm_own_published(self) -> None:
        """``_confirm_published`` for the calling context's own publishes only (a worker
        thread's, not every thread's). Any thread."""
        confirm = getattr(self._transport, "confirm_own_published", None)
        if confirm is not None:
            confirm()

    def _unready_backend(self) -> ResultBackend | None:
        """The result backend, if it must prepare before this process sends a task
        (``ResultBackend.sender_ready``: the rpc:// reply queue); None otherwise, and
        from inside a task, as upstream (a worker does not wait for its subtasks)."""
        if not self.conf._data["result_backend"] or current_task_var.get() is not None:
            return None
        backend = self.backend
        return None if backend.sender_ready else backend

    def _sent(self, task_id: str, name: str, options: Mapping[str, Any],
              ignore_result: Any, result: AsyncResult | None = None) -> AsyncResult:
        """The result of a task just sent (``result`` when the caller made it already):
        noted for read-ahead, or in the sending task's children."""
        if result is None:
            from ..result import AsyncResult

            result = AsyncResult(task_id, app=self, task_name=name)
        if current_task_var.get() is None:
            # Not from inside a task (a worker would pay for subscriptions nobody uses,
            # and must not wait on subtasks anyway; upstream skips these too).
            if not ignore_result and self.conf.result_backend:
                self.backend.on_sent(result)
        else:
            parent = current_request.get()
            if parent is not None and options.get("add_to_parent", True):
                parent.children.append(result.as_tuple())
        return result

    def send_task(self, name: str, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                  *, task: Task | None = None, **options: Any) -> AsyncResult:
        """Send a task by name. Blocking (on Redis only until the message is written: see
        transport/redis_publish.py; one broker round trip elsewhere); usable from any thread,
        including one running an event loop."""
        backend = self._unready_backend()
        if backend is not None:
            backend.prepare_sender()
        if task is not None and not options:  # a plain delay(): from its template, if it may
            sent = plain_send(self, task, args, kwargs)
            if sent is not None:
                return self._sent(sent[0], name, options, sent[1])
        message, task_id = self._prepare(name, args, kwargs, task, options)
        publishing = _publish_signals(name, message)
        self.transport.publish(message)
        if publishing:
            _after_publish(name, message)
        if self.conf._data["task_send_sent_event"]:
            self.portal.call(self._send_sent_events([(name, message)]))
        return self._sent(task_id, name, options, message.headers.get("ignore_result"))

    async def asend_task(self, name: str, args: Sequence[Any] | None = None,
                         kwargs: Mapping[str, Any] | None = None, *, task: Task | None = None,
                         **options: Any) -> AsyncResult:
        """``send_task`` for the running event loop (never blocks it)."""
        backend = self._unready_backend()
        if backend is not None:
            await backend.aprepare_sender()
        message, task_id = self._prepare(name, args, kwargs, task, options)
        publishing = _publish_signals(name, message)
        await self.transport.apublish(message)
        if publishing:
            _after_publish(name, message)
        if self.conf._data["task_send_sent_event"]:
            await self._send_sent_events([(name, message)])
        return self._sent(task_id, name, options, message.headers.get("ignore_result"))

    def _publish_many(self, items: Sequence[tuple[str, Message]]) -> None:
        """Publish prepared ``(task name, message)`` items (a canvas's), with the publish
        signals. Blocking, any thread: one message goes as ``send_task``'s does; several
        in one pipelined batch, on the portal loop."""
        backend = self._unready_backend() if items else None
        if backend is not None:
            backend.prepare_sender()
        signalled = [item for item in items if _publish_signals(*item)]
        if len(items) == 1:
            self.transport.publish(items[0][1])
        elif items:
            self.portal.call(self.transport.apublish_many([m for _, m in items]))
        for name, message in signalled:
            _after_publish(name, message)
        if items and self.conf._data["task_send_sent_event"]:
            self.portal.call(self._send_sent_events(items))

    async def _apublish_many(self, items: Sequence[tuple[str, Message]]) -> None:
        """``_publish_many`` on the running event loop (never blocks it)."""
        backend = self._unready_backend() if items else None
        if backend is not None:
            await backend.aprepare_sender()
        signalled = [item for item in items if _publish_signals(*item)]
        if len(items) == 1:
            await self.transport.apublish(items[0][1])
        elif items:
            await self.transport.apublish_many([m for _, m in items])
        for name, message in signalled:
            _after_publish(name, message)
        if items and self.conf._data["task_send_sent_event"]:
            await self._send_sent_events(items)

    async def _send_sent_events(self, items: Sequence[tuple[str, Message]]) -> None:
        """``task-sent`` events (``task_send_sent_event``) for messages just published, as
        Celery's producer sends them; a task whose ``send_events`` is False sends none.
        Never raises: an event the broker does not take is logged and counted
        (events/dispatcher.py)."""
        dispatcher = self._sent_dispatcher
        if dispatcher is None:
            dispatcher = self._sent_dispatcher = self.events.Dispatcher()
        for name, message in items:
            task = self.tasks.get(name)
            if task is not None and not task.send_events:
                continue
            headers = message.headers
            await dispatcher.asend(
                "task-sent", uuid=headers.get("id"), root_id=headers.get("root_id"),
                parent_id=headers.get("parent_id"), name=name, args=headers.get("argsrepr"),
                kwargs=headers.get("kwargsrepr"), retries=headers.get("retries") or 0,
                eta=headers.get("eta"), expires=headers.get("expires"),
                queue=message.routing_key, exchange=message.exchange,
                routing_key=message.routing_key)

    @property
    def Task(self) -> type[Task]:  # noqa: N802 - Celery's name
        """The app's task base class (``Celery(task_cls=...)``): ``class T(app.Task): ...``."""
        return self.task_cls

    @property
    def GroupResult(self) -> Any:  # noqa: N802 - Celery's name
        """``GroupResult`` bound to this app: ``app.GroupResult.restore(group_id)``."""
        bound = self._group_result_cls
        if bound is None:
            from ..result import GroupResult

            bound = self._group_result_cls = type("GroupResult", (GroupResult,),
                                                  {"default_app": self})
        return bound

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:  # noqa: N802 - Celery's name
        from ..result import AsyncResult

        return AsyncResult(task_id, app=self, **kwargs)

    def signature(self, *args: Any, **kwargs: Any) -> Any:
        from ..canvas import signature

        kwargs.setdefault("app", self)
        return signature(*args, **kwargs)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close broker and backend connections and stop the portal thread."""
        with self._setup_lock:
            transport, backend, portal = self._transport, self._backend, self._portal
            self._transport = self._backend = self._portal = None

        async def cleanup() -> None:
            if transport is not None:
                await transport.aclose()
            if backend is not None:
                await backend.aclose()

        # Async connections first, on the portal loop while it still runs; then the sync ones.
        if portal is not None:
            portal.stop(cleanup())
        if transport is not None:
            transport.close()
        if backend is not None:
            backend.close()

    def __enter__(self) -> Celery:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def worker_main(self, argv: Sequence[str] | None = None) -> None:
        """Run the ``celery worker`` command for this app (``app.worker_main(["worker"])``).

        The command line is a program built on the app: it is loaded by name when this is
        called, so that the app (a library layer) never imports it (see STYLE's layering).
        """
        cli = importlib.import_module("celery.bin.celery")
        cli.main(list(argv or ["worker"]), app=self)

    def start(self, argv: Sequence[str] | None = None) -> None:
        """Run the ``celery`` command line for this app (``app.start(["worker", "-l", "INFO"])``)."""
        cli = importlib.import_module("celery.bin.celery")
        cli.main(list(sys.argv[1:] if argv is None else argv), app=self)


def _publish_signals(name: str, message: Message) -> bool:
    """Send ``before_task_publish`` if anyone listens; True if ``after_task_publish`` is due.

    Receivers may change ``headers`` (and ``properties``) in place: the message sent is the
    one they see. The body they get is decoded (``(args, kwargs, embed)``), as in Celery.
    """
    from .. import signals

    if not (signals.before_task_publish.receivers or signals.after_task_publish.receivers):
        return False
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=name, body=_signal_body(message), exchange=message.exchange,
            routing_key=message.routing_key, headers=message.headers,
            properties=message.properties, declare=[], retry_policy=None)
    return bool(signals.after_task_publish.receivers)


def _after_publish(name: str, message: Message) -> None:
    from .. import signals

    signals.after_task_publish.send(
        sender=name, body=_signal_body(message), exchange=message.exchange,
        routing_key=message.routing_key, headers=message.headers, properties=message.properties)


def _signal_body(message: Message) -> Any:
    from ..messaging.serialization import loads

    try:
        return loads(message.body, message.content_type, message.content_encoding, accept=None)
    except Exception:  # a serializer we can write but not read back: give the bytes
        return message.body


def _pick(layers: tuple[Any, ...], key: str, default: Any = None) -> Any:
    """The first value that is not None for ``key`` in ``layers``: mappings (the send's
    options, the route) and last the task, read by attribute; else ``default``."""
    for layer in layers:
        value = layer.get(key) if isinstance(layer, dict) else getattr(layer, key, None)
        if value is not None:
            return value
    return default


def _sig_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and not (value and isinstance(value[0], str)):
        return [dict(v) for v in value]
    return [dict(value)]


def _default_app() -> Celery:
    return Celery("default")


# The default app, for code that asks for the current app before any was made (_state).
_state.make_default_app = _default_app
