"""AMQP topology: the exchanges, queues and bindings Celery declares, and where it publishes.

``Topology.from_conf`` reads ``task_queues`` (kombu ``Queue`` objects, ours from
``celery.kombu_compat``, or Celery's dict form) and the ``task_default_*`` settings the way
upstream Celery's ``app.amqp.Queues`` does, into frozen declarations (``QueueDecl``,
``ExchangeDecl``) with the exact flags and ``x-...`` arguments kombu sends, so upstream
Celery and we declare the same entities without ``PRECONDITION_FAILED``.
``Topology.target`` answers where upstream's ``send_task_message`` would publish a message.
``declare_queue`` declares one queue with aio-pika.

A ``Topology`` is immutable once built, so any thread or loop may read it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    import aio_pika.abc

__all__ = ["ExchangeDecl", "QueueDecl", "Topology", "declare_queue", "queue_arguments"]

logger = logging.getLogger(__name__)

#: Exchange types RabbitMQ has built in; plugins add ``x-...`` ones.
EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout", "headers"})
#: ``task_default_queue_type`` / ``task_create_missing_queue_type`` values (Celery 5.5).
QUEUE_TYPES = frozenset({"classic", "quorum"})
#: Exchanges the server owns: bound to, never declared (kombu's INTERNAL_EXCHANGE_PREFIX).
INTERNAL_EXCHANGE_PREFIX = "amq."

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


@dataclass(frozen=True, slots=True)
class ExchangeDecl:
    """One exchange as ``exchange.declare`` sends it (kombu's defaults: durable, not
    auto-delete). ``delivery_mode`` is kombu's ``Exchange.delivery_mode`` (``None``: the
    ``task_default_delivery_mode``); ``no_declare``: bound to, never declared."""

    name: str
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    delivery_mode: int | None = None
    no_declare: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", _frozen(self.arguments))

    def __hash__(self) -> int:
        return hash((self.name, self.type, self.durable, self.auto_delete))

    @property
    def declarable(self) -> bool:
        """Whether kombu would declare it: named, not ``amq.*``, not ``no_declare``."""
        return bool(self.name) and not self.name.startswith(INTERNAL_EXCHANGE_PREFIX) \
            and not self.no_declare


Binding = tuple[ExchangeDecl, str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class QueueDecl:
    """One queue as ``queue.declare`` sends it, with its bindings.

    ``bindings`` lists every ``queue.bind`` made after the declare: first the binding to the
    queue's own exchange (``exchange``/``routing_key``, kombu's ``Queue.exchange`` and
    ``Queue.routing_key``) when that exchange has a name, then the queue's extra
    ``binding(...)`` entries. ``exchange``/``routing_key`` are what publishing to the queue
    by name uses (``Topology.target``).
    """

    name: str
    durable: bool = True
    auto_delete: bool = False
    exclusive: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()
    exchange: ExchangeDecl | None = None
    routing_key: str = ""
    alias: str | None = None
    consumer_arguments: Mapping[str, Any] = field(default_factory=dict)
    no_declare: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", _frozen(self.arguments))
        object.__setattr__(self, "consumer_arguments", _frozen(self.consumer_arguments))
        object.__setattr__(self, "bindings", tuple(
            (exchange, key, _frozen(arguments)) for exchange, key, arguments in self.bindings))

    def __hash__(self) -> int:
        return hash(("Q", self.name))

    @property
    def quorum(self) -> bool:
        """``x-queue-type: quorum`` (Celery 5.5's test for a quorum queue)."""
        return self.arguments.get("x-queue-type") == "quorum"

    @property
    def max_priority(self) -> int | None:
        """``x-max-priority``, or ``None`` for a queue without priorities."""
        value = self.arguments.get("x-max-priority")
        return None if value is None else int(value)

    @property
    def exchanges(self) -> tuple[ExchangeDecl, ...]:
        """The exchanges to declare with this queue, in kombu's order, each once."""
        seen: dict[str, ExchangeDecl] = {}
        candidates = ([self.exchange] if self.exchange is not None else []) + \
            [exchange for exchange, _, _ in self.bindings]
        for exchange in candidates:
            if exchange.declarable and exchange.name not in seen:
                seen[exchange.name] = exchange
        return tuple(seen.values())


def _seconds_to_ms(value: Any) -> int:
    return int(float(value) * 1000)


#: kombu's Queue attributes turned into RabbitMQ queue arguments (``to_rabbitmq_queue_arguments``).
_RABBITMQ_ARGUMENTS: tuple[tuple[str, str, Any], ...] = (
    ("expires", "x-expires", _seconds_to_ms),
    ("message_ttl", "x-message-ttl", _seconds_to_ms),
    ("max_length", "x-max-length", int),
    ("max_length_bytes", "x-max-length-bytes", int),
    ("max_priority", "x-max-priority", int),
)


def queue_arguments(queue: Any) -> dict[str, Any]:
    """The ``queue.declare`` arguments kombu sends for a kombu-like queue object:
    ``queue_arguments`` overlaid with ``x-expires``/``x-message-ttl`` (seconds to int
    milliseconds), ``x-max-length``, ``x-max-length-bytes`` and ``x-max-priority`` from the
    attributes of those names."""
    arguments = dict(getattr(queue, "queue_arguments", None) or {})
    for attr, key, convert in _RABBITMQ_ARGUMENTS:
        value = getattr(queue, attr, None)
        if value is not None:
            arguments[key] = convert(value)
    return arguments


def _setting(conf: Any, key: str, default: Any = None) -> Any:
    getter = getattr(conf, "get", None)
    value = getter(key, default) if getter is not None else getattr(conf, key, default)
    return default if value is None else value


def _check_exchange_type(kind: str, where: str) -> str:
    if kind in EXCHANGE_TYPES or kind.startswith("x-"):
        return kind
    raise ImproperlyConfigured(f"{where}: unknown exchange type {kind!r} (use direct, topic, "
                               "fanout, headers or a plugin's x-... type)")


def _exchange_decl(exchange: Any, where: str) -> ExchangeDecl:
    """An ``ExchangeDecl`` from a kombu-like ``Exchange`` (or an exchange name)."""
    if isinstance(exchange, str):
        return ExchangeDecl(exchange)
    name = getattr(exchange, "name", None)
    if name is None or not hasattr(exchange, "type"):
        raise ImproperlyConfigured(f"{where}: {exchange!r} is not an Exchange")
    delivery_mode = getattr(exchange, "delivery_mode", None)
    if isinstance(delivery_mode, str):
        delivery_mode = {"transient": 1, "persistent": 2}.get(delivery_mode, delivery_mode)
    return ExchangeDecl(
        name=name or "",
        type=_check_exchange_type(exchange.type or "direct", where),
        durable=bool(getattr(exchange, "durable", True)),
        auto_delete=bool(getattr(exchange, "auto_delete", False)),
        arguments=dict(getattr(exchange, "arguments", None) or {}),
        delivery_mode=None if delivery_mode is None else int(delivery_mode),
        no_declare=bool(getattr(exchange, "no_declare", False)),
    )


def _dict_queue(name: str, options: Mapping[str, Any]) -> Any:
    """Celery's dict form of one ``task_queues`` entry, as a kombu_compat Queue."""
    from ..kombu_compat import Queue

    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"task_queues[{name!r}] must be a Queue or a mapping of queue "
                                   f"options, not {type(options).__name__}")
    options = dict(options)
    options.setdefault("routing_key", options.get("binding_key"))
    if options["routing_key"] is None:
        options["routing_key"] = name  # Celery: a dict queue's key defaults to its name
    try:
        return Queue.from_dict(name, **options)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"task_queues[{name!r}]: {exc}") from None


def _queue_objects(declared: Any) -> list[Any]:
    if declared is None:
        return []
    if isinstance(declared, Mapping):
        return [value if _is_queue(value) else _dict_queue(name, value)
                for name, value in declared.items()]
    if isinstance(declared, str | bytes) or not isinstance(declared, Iterable):
        raise ImproperlyConfigured(f"task_queues must be a list of Queue objects or a mapping of "
                                   f"queue names to options, not {declared!r}")
    queues = list(declared)
    for queue in queues:
        if not _is_queue(queue):
            raise ImproperlyConfigured(f"task_queues holds {queue!r}, which is not a Queue "
                                       "(use celery.kombu_compat.Queue or kombu.Queue)")
    return queues


def _is_queue(obj: Any) -> bool:
    return all(hasattr(obj, attr) for attr in ("name", "exchange", "routing_key", "durable"))


@dataclass(frozen=True, slots=True)
class _Defaults:
    """What ``Queues`` in upstream's ``app/amqp.py`` fills into every queue."""

    exchange: ExchangeDecl
    routing_key: str
    max_priority: int | None
    create_missing: bool
    missing_queue_type: str
    missing_exchange_type: str | None


class Topology:
    """Celery's queue table for one app: declared queues by name, plus how to make the
    missing ones and where to publish. Immutable; safe to share between threads and loops.
    """

    def __init__(self, queues: Iterable[QueueDecl], *, default_queue: str,
                 default_exchange: ExchangeDecl, default_routing_key: str,
                 create_missing: bool = True, missing_queue_type: str = "classic",
                 missing_exchange_type: str | None = None, max_priority: int | None = None,
                 default_delivery_mode: int = 2) -> None:
        self._defaults = _Defaults(default_exchange, default_routing_key, max_priority,
                                   create_missing, missing_queue_type, missing_exchange_type)
        self.default_queue = default_queue
        self.default_delivery_mode = default_delivery_mode
        self.queues: Mapping[str, QueueDecl] = MappingProxyType({q.name: q for q in queues})
        self._aliases: Mapping[str, QueueDecl] = MappingProxyType(
            {q.alias: q for q in self.queues.values() if q.alias})

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_conf(cls, conf: Any) -> Topology:
        """The topology an app's settings describe, as upstream Celery builds ``app.amqp.queues``.

        Raises:
            ImproperlyConfigured: with one line naming the bad setting.
        """
        default_queue = _setting(conf, "task_default_queue", "celery")
        exchange_type = _check_exchange_type(
            _setting(conf, "task_default_exchange_type", "direct"), "task_default_exchange_type")
        default_exchange = ExchangeDecl(_setting(conf, "task_default_exchange", default_queue),
                                        exchange_type)
        default_rk = _setting(conf, "task_default_routing_key", default_queue)
        queue_type = _queue_type(conf, "task_default_queue_type")
        missing_type = _queue_type(conf, "task_create_missing_queue_type")
        missing_exchange_type = conf_missing = _setting(conf, "task_create_missing_queue_exchange_type")
        if conf_missing is not None:
            _check_exchange_type(conf_missing, "task_create_missing_queue_exchange_type")
        max_priority = _setting(conf, "task_queue_max_priority")
        if max_priority is not None:
            max_priority = _int_setting(max_priority, "task_queue_max_priority")
        delivery_mode = _setting(conf, "task_default_delivery_mode", 2)
        delivery_mode = {"transient": 1, "persistent": 2}.get(delivery_mode, delivery_mode)
        topology = cls((), default_queue=default_queue, default_exchange=default_exchange,
                       default_routing_key=default_rk,
                       create_missing=bool(_setting(conf, "task_create_missing_queues", True)),
                       missing_queue_type=missing_type, missing_exchange_type=missing_exchange_type,
                       max_priority=max_priority,
                       default_delivery_mode=_int_setting(delivery_mode, "task_default_delivery_mode"))
        objects = _queue_objects(_setting(conf, "task_queues"))
        if not objects and default_queue:
            from ..kombu_compat import Queue

            arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
            objects = [Queue(default_queue, routing_key=default_rk, queue_arguments=arguments)]
        routed = [q for q in _routed_queue_objects(_setting(conf, "task_routes"))
                  if q.name not in {o.name for o in objects}]
        decls = [topology._decl(q, "task_queues") for q in objects]
        decls += [topology._decl(q, "task_routes") for q in routed]
        return topology._with(decls)

    @classmethod
    def default(cls) -> Topology:
        """The topology of an app with no settings: the ``celery`` direct exchange and queue."""
        return cls.from_conf({})

    def _with(self, decls: Iterable[QueueDecl]) -> Topology:
        d = self._defaults
        return Topology(decls, default_queue=self.default_queue, default_exchange=d.exchange,
                        default_routing_key=d.routing_key, create_missing=d.create_missing,
                        missing_queue_type=d.missing_queue_type,
                        missing_exchange_type=d.missing_exchange_type,
                        max_priority=d.max_priority, default_delivery_mode=self.default_delivery_mode)

    def _decl(self, queue: Any, where: str) -> QueueDecl:
        """A ``QueueDecl`` from a kombu-like queue, with ``Queues._add``'s defaults applied."""
        name = getattr(queue, "name", None)
        if not name or not isinstance(name, str):
            raise ImproperlyConfigured(f"{where}: {queue!r} has no name (server-named queues "
                                       "cannot be task queues)")
        where = f"{where} queue {name!r}"
        d = self._defaults
        exchange = getattr(queue, "exchange", None)
        own = d.exchange if exchange is None or not getattr(exchange, "name", exchange) \
            else _exchange_decl(exchange, where)
        routing_key = getattr(queue, "routing_key", "") or d.routing_key
        arguments = queue_arguments(queue)
        if getattr(queue, "no_ack", None):
            raise ImproperlyConfigured(f"{where}: no_ack queues are not supported (the worker "
                                       "acknowledges every message)")
        durable = bool(getattr(queue, "durable", True))
        exclusive = bool(getattr(queue, "exclusive", False))
        auto_delete = bool(getattr(queue, "auto_delete", False)) or exclusive
        quorum = arguments.get("x-queue-type") == "quorum"
        if quorum:
            _check_quorum(where, arguments, durable=durable, exclusive=exclusive,
                          auto_delete=auto_delete)
        if d.max_priority is not None and "x-max-priority" not in arguments:
            if quorum:
                _warn_once(f"task_queue_max_priority is not applied to quorum queue {name!r} "
                           "(quorum queues have no x-max-priority)")
            else:
                arguments["x-max-priority"] = d.max_priority
        bindings: list[Binding] = []
        if own.name:
            bindings.append((own, routing_key, dict(getattr(queue, "binding_arguments", None) or {})))
        for extra in sorted(getattr(queue, "bindings", None) or (), key=_binding_order):
            bindings.append(_binding(extra, where))
        return QueueDecl(
            name=name, durable=durable, auto_delete=auto_delete, exclusive=exclusive,
            arguments=arguments, bindings=tuple(bindings), exchange=own, routing_key=routing_key,
            alias=getattr(queue, "alias", None) or None,
            consumer_arguments=dict(getattr(queue, "consumer_arguments", None) or {}),
            no_declare=bool(getattr(queue, "no_declare", False)),
        )

    # -- reading ----------------------------------------------------------------------------

    def queue(self, name: str) -> QueueDecl:
        """The queue called (or aliased) ``name``; one not in ``task_queues`` is made as Celery
        makes a missing queue (a direct exchange of its name, bound with its name as key).

        Raises:
            ImproperlyConfigured: the queue is unknown and ``task_create_missing_queues`` is off.
        """
        found = self.queues.get(name) or self._aliases.get(name)
        if found is not None:
            return found
        d = self._defaults
        if not d.create_missing:
            raise ImproperlyConfigured(f"Queue {name!r} missing from task_queues "
                                       "(task_create_missing_queues is off)")
        from ..kombu_compat import Exchange, Queue

        arguments = {"x-queue-type": d.missing_queue_type} if d.missing_queue_type != "classic" \
            else None
        return self._decl(Queue(name, Exchange(name, d.missing_exchange_type or "direct"), name,
                                queue_arguments=arguments), "missing")

    def target(self, exchange: str, routing_key: str, *, queue: str | None = None) -> tuple[str, str]:
        """``(exchange, routing key)`` to publish to, as upstream's ``send_task_message`` picks.

        ``exchange`` is ``Message.exchange`` (``""`` when the sender named none) and
        ``routing_key`` is ``Message.routing_key``: the queue name, or the routing key the
        sender gave. ``queue``, when the caller still knows it, is the queue the message was
        routed to (then ``routing_key`` is taken as a key the sender gave).

        A named exchange is used as given. Otherwise the message goes to its queue: straight
        through the default exchange (``""``, key = queue name) when the queue's exchange is
        direct, else to the queue's exchange with the sender's key, the queue's binding key or
        ``task_default_routing_key``.
        """
        if exchange:
            return exchange, routing_key
        decl = self.queue(queue or routing_key)
        own = decl.exchange
        if own is None or own.type == "direct":
            return "", decl.name
        given = routing_key if queue and routing_key != queue else ""
        return own.name or self._defaults.exchange.name, \
            given or decl.routing_key or self._defaults.routing_key

    def delivery_mode(self, exchange: str, routing_key: str, *, queue: str | None = None) -> int:
        """Delivery mode for a message sent to a queue: its exchange's ``delivery_mode``, else
        ``task_default_delivery_mode`` (2, persistent), as upstream."""
        name = queue or (routing_key if not exchange else None)
        if name is not None:
            found = self.queues.get(name) or self._aliases.get(name)
            if found is not None and found.exchange is not None and found.exchange.delivery_mode:
                return found.exchange.delivery_mode
        return self.default_delivery_mode

    @property
    def quorum(self) -> bool:
        """Whether any queue in ``task_queues`` (or the default queue) is a quorum queue:
        Celery 5.5 then turns global QoS off. See :meth:`uses_quorum` for consumed queues."""
        return any(q.quorum for q in self.queues.values())

    def uses_quorum(self, consumed: Iterable[str] = ()) -> bool:
        """Whether a quorum queue is declared or among ``consumed`` (a worker's ``-Q``), as
        upstream's ``detect_quorum_queues`` looks at every queue the app knows."""
        return self.quorum or any(self.queue(name).quorum for name in consumed)


def _queue_type(conf: Any, key: str) -> str:
    value = _setting(conf, key, "classic")
    if value not in QUEUE_TYPES:
        raise ImproperlyConfigured(f"{key} must be 'classic' or 'quorum', not {value!r}")
    return str(value)


def _int_setting(value: Any, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{key} must be an integer, not {value!r}") from None


def _check_quorum(where: str, arguments: Mapping[str, Any], *, durable: bool, exclusive: bool,
                  auto_delete: bool) -> None:
    if "x-max-priority" in arguments:
        raise ImproperlyConfigured(f"{where} is a quorum queue and cannot have a max priority "
                                   "(x-max-priority): RabbitMQ refuses it")
    if not durable or exclusive or auto_delete:
        raise ImproperlyConfigured(f"{where} is a quorum queue and must be durable, not exclusive "
                                   "and not auto-delete: RabbitMQ refuses it otherwise")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    # Set operations from several threads only risk a duplicate warning, never a lost one.
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _binding_order(entry: Any) -> tuple[str, str]:
    exchange = getattr(entry, "exchange", None)
    return (getattr(exchange, "name", "") or "", getattr(entry, "routing_key", "") or "")


def _binding(entry: Any, where: str) -> Binding:
    exchange = getattr(entry, "exchange", None)
    if exchange is None:
        raise ImproperlyConfigured(f"{where}: binding {entry!r} names no exchange")
    return (_exchange_decl(exchange, where), getattr(entry, "routing_key", "") or "",
            dict(getattr(entry, "arguments", None) or {}))


def _routed_queue_objects(routes: Any) -> list[Any]:
    """Queue objects named by mapping entries of ``task_routes`` (``{'queue': Queue(...)}``),
    so a queue only a route names is declared as upstream declares it when publishing."""
    found: list[Any] = []
    entries = routes if isinstance(routes, list | tuple) else [routes]
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue  # router functions are asked per message
        for route in entry.values():
            queue = route.get("queue") if isinstance(route, Mapping) else None
            if queue is not None and not isinstance(queue, str) and _is_queue(queue):
                found.append(queue)
    return found


async def declare_queue(channel: aio_pika.abc.AbstractChannel,
                        decl: QueueDecl) -> aio_pika.abc.AbstractQueue:
    """Declare ``decl``'s exchanges, the queue and its bindings, with kombu's flags.

    Must be called on the loop that owns ``channel``. On a robust channel aio-pika records
    the declarations and makes them again after a reconnect. ``no_declare`` queues are only
    checked (passive declare).
    """
    if decl.no_declare:
        return await channel.get_queue(decl.name, ensure=True)
    for exchange in decl.exchanges:
        await channel.declare_exchange(
            exchange.name, exchange.type, durable=exchange.durable,
            auto_delete=exchange.auto_delete, arguments=dict(exchange.arguments) or None)
    queue = await channel.declare_queue(
        decl.name, durable=decl.durable, exclusive=decl.exclusive, auto_delete=decl.auto_delete,
        arguments=dict(decl.arguments) or None)
    for exchange, routing_key, arguments in decl.bindings:
        await queue.bind(exchange.name, routing_key, arguments=dict(arguments) or None)
    return queue
