"""``Exchange``, ``Queue`` and ``binding``: kombu's names for declaring ``task_queues``.

A small, declaration-only stand-in for the three kombu entities Celery users put in their
configuration, so ``from celery.kombu_compat import Exchange, Queue`` replaces
``from kombu import Exchange, Queue`` without installing kombu. The objects hold settings
and nothing else: no channel binding, no ``declare()``, no ``publish()``. The AMQP transport
reads them (and real kombu objects, by the same attribute names) through
``celery.transport.amqp_topology.Topology``.

Attribute names and defaults are kombu 5.x's: ``durable=True``, ``auto_delete=False``,
``exclusive=False`` (``exclusive`` implies ``auto_delete``), the ``direct`` exchange type,
and ``expires``/``message_ttl``/``max_length``/``max_length_bytes``/``max_priority`` turned
into RabbitMQ's ``x-...`` queue arguments when declared. The objects are plain data built
once at configuration time; they are not meant to be changed while workers read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Broadcast", "Exchange", "Queue", "binding"]

#: Delivery modes by name, as kombu accepts them.
DELIVERY_MODES = {"transient": 1, "persistent": 2}


def _delivery_mode(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return DELIVERY_MODES[value]
        except KeyError:
            raise ValueError(f"delivery_mode must be 1, 2, 'transient' or 'persistent', not {value!r}") from None
    return int(value)


def _arguments(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


class Exchange:
    """An AMQP exchange declaration (kombu's ``Exchange``, settings only).

    Args:
        name: Exchange name; ``''`` is the server's default exchange (never declared).
        type: ``direct`` (the default), ``topic``, ``fanout``, ``headers`` or a plugin's
            ``x-...`` type.
        durable: Survives a broker restart.
        auto_delete: Deleted by the server when its last queue is unbound.
        delivery_mode: ``1``/``'transient'`` or ``2``/``'persistent'`` for messages sent
            through it; ``None`` leaves it to ``task_default_delivery_mode``.
        arguments: Extra ``exchange.declare`` arguments.
        passive: Only check that the exchange exists.
        no_declare: Never declare it (it is made by someone else).
    """

    TRANSIENT_DELIVERY_MODE = 1
    PERSISTENT_DELIVERY_MODE = 2

    def __init__(self, name: str = "", type: str = "", channel: Any = None, *,  # noqa: A002
                 durable: bool = True, auto_delete: bool = False, delivery_mode: Any = None,
                 arguments: Mapping[str, Any] | None = None, passive: bool = False,
                 no_declare: bool = False, **unused: Any) -> None:
        if channel is not None:
            raise TypeError("celery.kombu_compat.Exchange holds settings only; it cannot be bound "
                            "to a channel")
        self.name = name or ""
        self.type = type or "direct"
        self.durable = bool(durable)
        self.auto_delete = bool(auto_delete)
        self.delivery_mode = _delivery_mode(delivery_mode)
        self.arguments = _arguments(arguments)
        self.passive = bool(passive)
        self.no_declare = bool(no_declare)
        # kombu accepts and ignores a few more keywords (routing_key, ...): keep them
        # visible so a reader of the configuration sees what was given.
        self.extra = dict(unused)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Exchange):
            return NotImplemented
        return (self.name == other.name and self.type == other.type
                and self.arguments == other.arguments and self.durable == other.durable
                and self.auto_delete == other.auto_delete
                and self.delivery_mode == other.delivery_mode)

    def __hash__(self) -> int:
        return hash(f"E|{self.name}")

    def __repr__(self) -> str:
        return f"<Exchange {self.name or '(default)'}({self.type})>"

    def as_dict(self) -> dict[str, Any]:
        """kombu's ``as_dict()`` keys (settings only)."""
        return {"name": self.name, "type": self.type, "arguments": self.arguments,
                "durable": self.durable, "passive": self.passive,
                "auto_delete": self.auto_delete, "delivery_mode": self.delivery_mode,
                "no_declare": self.no_declare}


class binding:  # noqa: N801 - kombu's name
    """One extra binding of a queue: ``Queue('q', [binding(ex, 'key'), ...])``."""

    def __init__(self, exchange: Exchange | None = None, routing_key: str = "",
                 arguments: Mapping[str, Any] | None = None,
                 unbind_arguments: Mapping[str, Any] | None = None) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.arguments = _arguments(arguments)
        self.unbind_arguments = _arguments(unbind_arguments)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, binding):
            return NotImplemented
        return (self.exchange == other.exchange and self.routing_key == other.routing_key
                and self.arguments == other.arguments)

    def __hash__(self) -> int:
        name = self.exchange.name if self.exchange is not None else ""
        return hash((name, self.routing_key))

    def __repr__(self) -> str:
        return f"<binding: {self.exchange!r}->{self.routing_key}>"


class Queue:
    """An AMQP queue declaration (kombu's ``Queue``, settings only).

    ``exchange`` may be an :class:`Exchange`, an exchange name (a ``direct`` exchange of
    that name), or a list of :class:`binding` (then the queue has no exchange of its own).

    Args:
        name: Queue name.
        exchange: See above; ``None`` leaves it to Celery (``task_default_exchange``).
        routing_key: Binding key to ``exchange``.
        durable: Survives a broker restart.
        exclusive: Only this connection may use it; implies ``auto_delete``.
        auto_delete: Deleted by the server when its last consumer goes.
        queue_arguments: Extra ``queue.declare`` arguments (``x-queue-type`` ...).
        binding_arguments: Arguments of the binding to ``exchange``.
        consumer_arguments: Arguments of ``basic.consume`` (``x-priority`` ...).
        bindings: Extra :class:`binding` objects.
        alias: Another name the queue may be looked up by.
        expires, message_ttl: Seconds, sent as ``x-expires``/``x-message-ttl`` milliseconds.
        max_length, max_length_bytes, max_priority: ``x-max-length``, ``x-max-length-bytes``,
            ``x-max-priority``.
        no_declare: Never declare it.
        no_ack: Consume without acknowledgements (refused by our worker, which acks).
    """

    def __init__(self, name: str = "", exchange: Any = None, routing_key: str = "",
                 channel: Any = None, bindings: Iterable[binding] | None = None, *,
                 durable: bool = True, exclusive: bool = False, auto_delete: bool = False,
                 queue_arguments: Mapping[str, Any] | None = None,
                 binding_arguments: Mapping[str, Any] | None = None,
                 consumer_arguments: Mapping[str, Any] | None = None,
                 alias: str | None = None, no_ack: bool | None = None, no_declare: bool = False,
                 expires: float | None = None, message_ttl: float | None = None,
                 max_length: int | None = None, max_length_bytes: int | None = None,
                 max_priority: int | None = None, on_declared: Any = None) -> None:
        if channel is not None:
            raise TypeError("celery.kombu_compat.Queue holds settings only; it cannot be bound "
                            "to a channel")
        if on_declared is not None:
            raise TypeError("celery.kombu_compat.Queue does not call on_declared")
        self.name = name or ""
        self.bindings: set[binding] = set(bindings or ())
        self.exchange: Exchange | None
        if isinstance(exchange, str):
            self.exchange = Exchange(exchange)
        elif isinstance(exchange, list | tuple | set):
            self.bindings |= set(exchange)
            self.exchange = None
        else:
            self.exchange = exchange
        if self.bindings:
            self.exchange = None
        self.routing_key = routing_key or ""
        self.durable = bool(durable)
        self.exclusive = bool(exclusive)
        self.auto_delete = bool(auto_delete) or self.exclusive  # exclusive implies auto-delete
        self.queue_arguments = _arguments(queue_arguments)
        self.binding_arguments = _arguments(binding_arguments)
        self.consumer_arguments = _arguments(consumer_arguments)
        self.alias = alias
        self.no_ack = no_ack
        self.no_declare = bool(no_declare)
        self.expires = None if expires is None else float(expires)
        self.message_ttl = None if message_ttl is None else float(message_ttl)
        self.max_length = None if max_length is None else int(max_length)
        self.max_length_bytes = None if max_length_bytes is None else int(max_length_bytes)
        self.max_priority = None if max_priority is None else int(max_priority)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Queue):
            return NotImplemented
        return (self.name == other.name and self.exchange == other.exchange
                and self.routing_key == other.routing_key
                and self.queue_arguments == other.queue_arguments
                and self.binding_arguments == other.binding_arguments
                and self.consumer_arguments == other.consumer_arguments
                and self.durable == other.durable and self.exclusive == other.exclusive
                and self.auto_delete == other.auto_delete)

    def __hash__(self) -> int:
        return hash(f"Q|{self.name}")

    def __repr__(self) -> str:
        if self.bindings:
            return f"<Queue {self.name} -> {sorted(map(repr, self.bindings))}>"
        return f"<Queue {self.name} -> {self.exchange!r} -> {self.routing_key}>"

    @classmethod
    def from_dict(cls, queue: str, **options: Any) -> Queue:
        """Celery's dict form of a queue (``exchange``, ``exchange_type``, ``routing_key`` or
        ``binding_key``, ``exchange_durable``/``queue_durable``, ...), as kombu reads it."""
        def either(first: str, second: str) -> Any:
            value = options.get(first)
            return options.get(second) if value is None else value

        exchange = Exchange(options.get("exchange") or "", type=options.get("exchange_type") or "",
                            delivery_mode=options.get("delivery_mode"),
                            durable=_default(either("exchange_durable", "durable"), True),
                            auto_delete=_default(either("exchange_auto_delete", "auto_delete"), False),
                            arguments=options.get("exchange_arguments"))
        keep = ("queue_arguments", "binding_arguments", "consumer_arguments", "exclusive", "alias",
                "no_ack", "no_declare", "expires", "message_ttl", "max_length",
                "max_length_bytes", "max_priority", "bindings")
        kwargs = {key: options[key] for key in keep if options.get(key) is not None}
        bindings = kwargs.pop("bindings", None)
        return cls(queue, exchange, options.get("binding_key") or options.get("routing_key") or "",
                   bindings=bindings,
                   durable=_default(either("queue_durable", "durable"), True),
                   auto_delete=_default(either("queue_auto_delete", "auto_delete"), False),
                   **kwargs)


class Broadcast(Queue):
    """A queue of its own for every process, fed by a fanout exchange (kombu's
    ``kombu.common.Broadcast``): every worker consuming ``name`` gets every message.

    The queue is ``bcast.<uuid>`` (or ``queue``; ``unique=True`` adds the uuid to it too),
    auto-deleted, looked up by ``name`` (its alias); the exchange is the fanout ``name``.
    Publishers do not declare it (only consumers do), as upstream.
    """

    def __init__(self, name: str | None = None, queue: str | None = None, unique: bool = False,
                 auto_delete: bool = True, exchange: Any = None, alias: str | None = None,
                 **kwargs: Any) -> None:
        import uuid

        if unique:
            queue = f"{queue or 'bcast'}.{uuid.uuid4()}"
        else:
            queue = queue or f"bcast.{uuid.uuid4()}"
        self.queue = queue
        super().__init__(queue, exchange if exchange is not None else Exchange(name or "", "fanout"),
                         alias=alias or name, auto_delete=auto_delete, **kwargs)


def _default(value: Any, default: bool) -> bool:
    return default if value is None else bool(value)
