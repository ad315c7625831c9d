"""AMQP declarations (``ExchangeDecl``, ``QueueDecl``) and reading them from kombu-like objects.

The readers take kombu's ``Queue``/``Exchange``/``binding`` objects, ours from
``celery.kombu_compat``, or Celery's dict form, by attribute name (duck typing), and give
frozen declarations with kombu's flags and ``x-...`` arguments. Celery's defaults for the
queues of an app (default exchange, routing key, max priority) are applied by
``amqp_topology.Topology``, which re-exports the declaration classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..exceptions import ImproperlyConfigured

__all__ = ["Binding", "ExchangeDecl", "QueueDecl", "queue_arguments"]

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
    #: kombu's ``Exchange(passive=True)``: only checked to exist (a passive declare).
    passive: bool = False

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

    ``bindings`` lists every ``queue.bind`` made after the declare: the queue's extra
    ``binding(...)`` entries when it has some, else the binding to its own exchange
    (``exchange``/``routing_key``, kombu's ``Queue.exchange`` and ``Queue.routing_key``) when
    that exchange has a name, as kombu declares a Celery queue. ``exchange``/``routing_key``
    are what publishing to the queue by name uses (``Topology.target``).
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
    #: A ``Broadcast`` queue (one per process, behind a fanout exchange): consumers declare
    #: it, publishers only declare its exchange, as upstream's producer skips Broadcast queues.
    broadcast: bool = False

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
        for exchange, _, _ in self.bindings:
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


def check_exchange_type(kind: str, where: str) -> str:
    if kind in EXCHANGE_TYPES or kind.startswith("x-"):
        return kind
    raise ImproperlyConfigured(f"{where}: unknown exchange type {kind!r} (use direct, topic, "
                               "fanout, headers or a plugin's x-... type)")


def exchange_decl(exchange: Any, where: str) -> ExchangeDecl:
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
        type=check_exchange_type(exchange.type or "direct", where),
        durable=bool(getattr(exchange, "durable", True)),
        auto_delete=bool(getattr(exchange, "auto_delete", False)),
        arguments=dict(getattr(exchange, "arguments", None) or {}),
        delivery_mode=None if delivery_mode is None else int(delivery_mode),
        no_declare=bool(getattr(exchange, "no_declare", False)),
        passive=bool(getattr(exchange, "passive", False)),
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


def queue_objects(declared: Any) -> list[Any]:
    if declared is None:
        return []
    if isinstance(declared, Mapping):
        return [value if is_queue(value) else _dict_queue(name, value)
                for name, value in declared.items()]
    if isinstance(declared, str | bytes) or not isinstance(declared, Iterable):
        raise ImproperlyConfigured(f"task_queues must be a list of Queue objects or a mapping of "
                                   f"queue names to options, not {declared!r}")
    queues = list(declared)
    for queue in queues:
        if not is_queue(queue):
            raise ImproperlyConfigured(f"task_queues holds {queue!r}, which is not a Queue "
                                       "(use celery.kombu_compat.Queue or kombu.Queue)")
    return queues


def is_queue(obj: Any) -> bool:
    return all(hasattr(obj, attr) for attr in ("name", "exchange", "routing_key", "durable"))


def check_quorum(where: str, arguments: Mapping[str, Any], *, durable: bool, exclusive: bool,
                  auto_delete: bool) -> None:
    if "x-max-priority" in arguments:
        raise ImproperlyConfigured(f"{where} is a quorum queue and cannot have a max priority "
                                   "(x-max-priority): RabbitMQ refuses it")
    if not durable or exclusive or auto_delete:
        raise ImproperlyConfigured(f"{where} is a quorum queue and must be durable, not exclusive "
                                   "and not auto-delete: RabbitMQ refuses it otherwise")


def binding_order(entry: Any) -> tuple[str, str]:
    exchange = getattr(entry, "exchange", None)
    return (getattr(exchange, "name", "") or "", getattr(entry, "routing_key", "") or "")


def binding_decl(entry: Any, where: str) -> Binding:
    exchange = getattr(entry, "exchange", None)
    if exchange is None:
        raise ImproperlyConfigured(f"{where}: binding {entry!r} names no exchange")
    return (exchange_decl(exchange, where), getattr(entry, "routing_key", "") or "",
            dict(getattr(entry, "arguments", None) or {}))


def routed_queue_objects(routes: Any) -> list[Any]:
    """Queue objects named by mapping entries of ``task_routes`` (``{'queue': Queue(...)}``),
    so a queue only a route names is declared as upstream declares it when publishing."""
    found: list[Any] = []
    entries = routes if isinstance(routes, list | tuple) else [routes]
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue  # router functions are asked per message
        for route in entry.values():
            queue = route.get("queue") if isinstance(route, Mapping) else None
            if queue is not None and not isinstance(queue, str) and is_queue(queue):
                found.append(queue)
    return found
