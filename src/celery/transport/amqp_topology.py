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
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..exceptions import ImproperlyConfigured
from .amqp_entities import (
    EXCHANGE_TYPES,
    INTERNAL_EXCHANGE_PREFIX,
    QUEUE_TYPES,
    Binding,
    ExchangeDecl,
    QueueDecl,
    binding_decl,
    binding_order,
    check_exchange_type,
    check_quorum,
    exchange_decl,
    queue_arguments,
    queue_objects,
    routed_queue_objects,
)

if TYPE_CHECKING:
    import aio_pika.abc

__all__ = ["EXCHANGE_TYPES", "INTERNAL_EXCHANGE_PREFIX", "QUEUE_TYPES", "ExchangeDecl", "QueueDecl",
           "Topology", "declare_exchanges", "declare_queue", "queue_arguments"]

logger = logging.getLogger(__name__)

def _setting(conf: Any, key: str, default: Any = None) -> Any:
    getter = getattr(conf, "get", None)
    value = getter(key, default) if getter is not None else getattr(conf, key, default)
    return default if value is None else value


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
                 default_delivery_mode: int = 2, detect_quorum: bool = True,
                 delayed_queue_type: str = "quorum") -> None:
        #: ``worker_detect_quorum_queues``: see :meth:`global_qos`.
        self.detect_quorum = detect_quorum
        #: ``broker_native_delayed_delivery_queue_type``: the type of the delay levels'
        #: queues (``transport/amqp_delayed.py``).
        self.delayed_queue_type = delayed_queue_type
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
        exchange_type = check_exchange_type(
            _setting(conf, "task_default_exchange_type", "direct"), "task_default_exchange_type")
        default_exchange = ExchangeDecl(_setting(conf, "task_default_exchange", default_queue),
                                        exchange_type)
        default_rk = _setting(conf, "task_default_routing_key", default_queue)
        queue_type = _queue_type(conf, "task_default_queue_type")
        missing_type = _queue_type(conf, "task_create_missing_queue_type")
        missing_exchange_type = conf_missing = _setting(conf, "task_create_missing_queue_exchange_type")
        if conf_missing is not None:
            check_exchange_type(conf_missing, "task_create_missing_queue_exchange_type")
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
                       default_delivery_mode=_int_setting(delivery_mode, "task_default_delivery_mode"),
                       detect_quorum=bool(_setting(conf, "worker_detect_quorum_queues", True)),
                       delayed_queue_type=_queue_type(conf, "broker_native_delayed_delivery_queue_type",
                                                      "quorum"))
        objects = queue_objects(_setting(conf, "task_queues"))
        if not objects and default_queue:
            from ..kombu_compat import Queue

            arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
            objects = [Queue(default_queue, routing_key=default_rk, queue_arguments=arguments)]
        routed = [q for q in routed_queue_objects(_setting(conf, "task_routes"))
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
                        max_priority=d.max_priority, default_delivery_mode=self.default_delivery_mode,
                        detect_quorum=self.detect_quorum,
                        delayed_queue_type=self.delayed_queue_type)

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
            else exchange_decl(exchange, where)
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
            check_quorum(where, arguments, durable=durable, exclusive=exclusive,
                          auto_delete=auto_delete)
        if d.max_priority is not None and "x-max-priority" not in arguments:
            if quorum:
                _warn_once(f"task_queue_max_priority is not applied to quorum queue {name!r} "
                           "(quorum queues have no x-max-priority)")
            else:
                arguments["x-max-priority"] = d.max_priority
        extra = sorted(getattr(queue, "bindings", None) or (), key=binding_order)
        bindings: list[Binding] = [binding_decl(entry, where) for entry in extra]
        if own.name and not bindings:
            # A queue with bindings routes by the default exchange (Queues._add gives it one)
            # but is declared without it: kombu's bound copy of a queue with bindings drops
            # its exchange, so upstream never declares that binding.
            bindings.append((own, routing_key, dict(getattr(queue, "binding_arguments", None) or {})))
        return QueueDecl(
            name=name, durable=durable, auto_delete=auto_delete, exclusive=exclusive,
            arguments=arguments, bindings=tuple(bindings), exchange=own, routing_key=routing_key,
            alias=getattr(queue, "alias", None) or None,
            consumer_arguments=dict(getattr(queue, "consumer_arguments", None) or {}),
            no_declare=bool(getattr(queue, "no_declare", False)),
            broadcast=any(cls.__name__ == "Broadcast" for cls in type(queue).__mro__),
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

        ``exchange`` is ``Message.exchange`` (``""`` when the sender named none),
        ``routing_key`` is ``Message.routing_key`` and ``queue`` is ``Message.queue``: the
        queue the route chose when the sender also gave a routing key (then ``routing_key`` is
        that key), else ``None`` (then ``routing_key`` is the queue's name).

        As upstream: a message for a queue whose exchange is direct goes straight to the
        queue through the server's default exchange (``""``, key = queue name) unless the
        sender named both an exchange and a key; a message for a topic/fanout/headers queue
        goes to the queue's exchange with the sender's key, else the queue's binding key;
        a named exchange is used as given.
        """
        if queue is None:
            if exchange and not self._known(routing_key):
                return exchange, routing_key  # a key for a named exchange, no queue to go by
            queue, given = routing_key, ""
        else:
            given = routing_key
        decl = self.queue(queue)
        own = decl.exchange
        if (not exchange or not given) and (own is None or own.type == "direct"):
            return "", decl.name
        if not exchange:
            assert own is not None  # a queue without an exchange is direct, handled above
            return own.name or self._defaults.exchange.name, \
                given or decl.routing_key or self._defaults.routing_key
        return exchange, given

    def _known(self, name: str) -> bool:
        return name in self.queues or name in self._aliases

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

    def global_qos(self, consumed: Iterable[str] = ()) -> bool:
        """Whether the worker's ``basic.qos`` is global (RabbitMQ's per-channel prefetch, as
        upstream on RabbitMQ), or per consumer: Celery 5.5 turns global QoS off when it finds
        a quorum queue (``worker_detect_quorum_queues``, default on), since quorum queues do
        not support it; the prefetch count is then fixed for each consumer."""
        return not (self.detect_quorum and self.uses_quorum(consumed))

    def uses_quorum(self, consumed: Iterable[str] = ()) -> bool:
        """Whether a quorum queue is declared or among ``consumed`` (a worker's ``-Q``), as
        upstream's ``detect_quorum_queues`` looks at every queue the app knows."""
        return self.quorum or any(self.queue(name).quorum for name in consumed)


def _queue_type(conf: Any, key: str, default: str = "classic") -> str:
    value = _setting(conf, key, default)
    if value not in QUEUE_TYPES:
        raise ImproperlyConfigured(f"{key} must be 'classic' or 'quorum', not {value!r}")
    return str(value)


def _int_setting(value: Any, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{key} must be an integer, not {value!r}") from None


_warned: set[str] = set()
_warned_lock = threading.Lock()  # guards _warned: topologies are built in any thread


def _warn_once(message: str) -> None:
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    logger.warning(message)


async def declare_queue(channel: aio_pika.abc.AbstractChannel,
                        decl: QueueDecl) -> aio_pika.abc.AbstractQueue:
    """Declare ``decl``'s exchanges, the queue and its bindings, with kombu's flags.

    Must be called on the loop that owns ``channel``. On a robust channel aio-pika records
    the declarations and makes them again after a reconnect. ``no_declare`` queues are only
    checked (passive declare).
    """
    if decl.no_declare:
        return await channel.get_queue(decl.name, ensure=True)
    await declare_exchanges(channel, decl)
    queue = await channel.declare_queue(
        decl.name, durable=decl.durable, exclusive=decl.exclusive, auto_delete=decl.auto_delete,
        arguments=dict(decl.arguments) or None)
    for exchange, routing_key, arguments in decl.bindings:
        await queue.bind(exchange.name, routing_key, arguments=dict(arguments) or None)
    return queue


async def declare_exchanges(channel: aio_pika.abc.AbstractChannel, decl: QueueDecl) -> None:
    """Declare only ``decl``'s exchanges: what a publisher declares for a ``Broadcast``
    queue, whose per-process queue only its consumers make. Call on the channel's loop."""
    if decl.no_declare:
        return
    for exchange in decl.exchanges:
        await channel.declare_exchange(
            exchange.name, exchange.type, durable=exchange.durable,
            auto_delete=exchange.auto_delete, passive=exchange.passive,
            arguments=dict(exchange.arguments) or None)
