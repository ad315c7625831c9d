"""Native delayed delivery (Celery 5.5, RabbitMQ): countdown tasks parked in the broker.

When an app uses quorum queues, upstream Celery publishes a task with a countdown or ETA
to the topic exchange ``celery_delayed_27`` with a routing key that spells the delay in 28
binary digits (``1.0.1. ... .<routing key>``). 28 levels of exchanges and TTL queues
(``celery_delayed_<level>``: level *n* holds a message 2**n seconds when its digit is 1)
dead-letter it level by level into the topic exchange ``celery_delayed_delivery``, from which
each task queue's exchange receives it by the binding ``#.<binding key>``. Upstream workers
declare that topology when they start; ours must too, or upstream clients' delayed tasks for
our queues are dropped as unroutable. Direct exchanges cannot take part (the ``#.`` binding
key needs a topic or fanout exchange), as upstream warns.

Here: the declarations (``declare_native_delayed_delivery``, names and arguments as kombu's
``native_delayed_delivery``) and the publisher's choice (``native_delay_target``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .amqp_topology import QUEUE_TYPES, QueueDecl, Topology, declare_queue

if TYPE_CHECKING:
    import aio_pika.abc

    from ..messaging.protocol import Message

__all__ = ["DELAYED_DELIVERY_EXCHANGE", "MAX_LEVEL", "DelayedDelivery", "declare_native_delayed_delivery",
           "delayed_routing_key", "level_name", "native_delay_target", "parked_target"]

logger = logging.getLogger(__name__)

#: Binary digits of the delay; the longest delay is 2**28 - 1 seconds (about 8.5 years).
BITS = 28
MAX_LEVEL = BITS - 1
DELAYED_DELIVERY_EXCHANGE = "celery_delayed_delivery"
_DELAY_PREFIX = re.compile(rf"^(?:[01]\.){{{BITS}}}")


def level_name(level: int) -> str:
    """``celery_delayed_<level>``: the exchange and the queue of one level."""
    return f"celery_delayed_{level}"


def delayed_routing_key(countdown: int, routing_key: str) -> str:
    """The routing key that parks a message ``countdown`` whole seconds (kombu's
    ``calculate_routing_key``); a delay prefix already on ``routing_key`` (a retried task's)
    is replaced, not stacked."""
    if countdown < 1:
        raise ValueError(f"countdown must be at least 1 second, not {countdown!r}")
    if not routing_key:
        raise ValueError("routing_key must not be empty")
    routing_key = _DELAY_PREFIX.sub("", routing_key, count=1)
    return ".".join(f"{countdown:0{BITS}b}") + f".{routing_key}"


def _level_arguments(level: int, queue_type: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "x-queue-type": queue_type,
        "x-overflow": "reject-publish",
        "x-message-ttl": 2 ** level * 1000,
        "x-dead-letter-exchange": level_name(level - 1) if level > 0 else DELAYED_DELIVERY_EXCHANGE,
    }
    if queue_type == "quorum":
        arguments["x-dead-letter-strategy"] = "at-least-once"
    return arguments


async def _declare_levels(channel: aio_pika.abc.AbstractChannel, queue_type: str) -> None:
    # Level n's queue takes keys whose digit for 2**n is 1 ("*." per lower digit before it);
    # its exchange passes keys whose digit is 0 on to level n-1 (exchange-to-exchange).
    exchanges: dict[int, aio_pika.abc.AbstractExchange] = {}
    for level in range(MAX_LEVEL, -1, -1):
        name = level_name(level)
        exchanges[level] = await channel.declare_exchange(name, "topic", durable=True)
        queue = await channel.declare_queue(name, durable=True,
                                            arguments=_level_arguments(level, queue_type))
        await queue.bind(name, "*." * (MAX_LEVEL - level) + "1.#")
    for level in range(MAX_LEVEL, 0, -1):
        await exchanges[level - 1].bind(level_name(level), "*." * (MAX_LEVEL - level) + "0.#")
    delivery = await channel.declare_exchange(DELAYED_DELIVERY_EXCHANGE, "topic", durable=True)
    await delivery.bind(level_name(0), "*." * MAX_LEVEL + "0.#")


async def _bind_queue(channel: aio_pika.abc.AbstractChannel, decl: QueueDecl) -> None:
    queue = await declare_queue(channel, decl)  # idempotent; registers it on a robust channel
    for exchange, routing_key, _ in decl.bindings:
        if exchange.type == "direct":
            logger.warning("Exchange %s of queue %s is a direct exchange: native delayed delivery "
                           "cannot reach it, so countdown/ETA tasks sent through it are held by "
                           "the worker until they are due", exchange.name, decl.name)
            continue
        key = routing_key if routing_key.startswith("#") else f"#.{routing_key}"
        destination = await channel.declare_exchange(
            exchange.name, exchange.type, durable=exchange.durable,
            auto_delete=exchange.auto_delete, arguments=dict(exchange.arguments) or None)
        await destination.bind(DELAYED_DELIVERY_EXCHANGE, key)
        await queue.bind(exchange.name, key)


async def declare_native_delayed_delivery(channel: aio_pika.abc.AbstractChannel, topology: Topology,
                                          queues: Iterable[str], *,
                                          queue_type: str | None = None) -> None:
    """Declare the delay levels and bind ``queues`` to the delivery exchange, as an upstream
    Celery 5.5 worker does at start when it uses quorum queues (``topology.uses_quorum``).
    ``queue_type`` defaults to the topology's ``broker_native_delayed_delivery_queue_type``.

    Must be called on the loop that owns ``channel``; on a robust channel the declarations
    are made again after a reconnect.
    """
    queue_type = queue_type or topology.delayed_queue_type
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"broker_native_delayed_delivery_queue_type must be 'classic' or "
                         f"'quorum', not {queue_type!r}")
    await _declare_levels(channel, queue_type)
    for name in queues:
        await _bind_queue(channel, topology.queue(name))


def native_delay_target(topology: Topology, queue: str, countdown: float) -> tuple[str, str] | None:
    """Where upstream Celery 5.5 publishes a task for ``queue`` due in ``countdown`` seconds
    when the app uses quorum queues: ``("celery_delayed_27", <delay key>)``, or ``None`` to
    publish as usual (no quorum queue, a direct exchange, or less than a whole second left).

    As upstream, the delay key ends with the queue's binding key (not a key the sender gave).
    """
    if not topology.uses_quorum([queue]):
        return None
    decl = topology.queue(queue)
    own = decl.exchange
    if own is None or own.type == "direct":
        logger.warning("Queue %s is bound to a direct exchange: native delayed delivery cannot "
                       "route through it, so this countdown/ETA task is held by the worker "
                       "until it is due", decl.name)
        return None
    if int(countdown) < 1:
        return None
    return level_name(MAX_LEVEL), delayed_routing_key(int(countdown), decl.routing_key)


def parked_target(topology: Topology, message: Message, *,
                  now: dt.datetime | None = None) -> tuple[str, str] | None:
    """``native_delay_target`` for a task message: the countdown is what is left until its
    ``eta`` header (a naive time is UTC); ``None`` for a message without one, or one sent to
    a named exchange (upstream parks only messages routed to a queue)."""
    eta = message.headers.get("eta") if message.headers else None
    if not eta or message.exchange:
        return None
    try:
        due = dt.datetime.fromisoformat(eta)
    except (TypeError, ValueError):
        return None  # the worker meets the bad header and rejects the message, once
    if due.tzinfo is None:
        due = due.replace(tzinfo=dt.UTC)
    # Whole seconds, as upstream's int(countdown); the 0.1 s allows for the time between the
    # eta being set from a countdown and this publish, so countdown=1 still parks 1 s.
    countdown = (due - (now or dt.datetime.now(dt.UTC))).total_seconds() + 0.1
    return native_delay_target(topology, message.queue or message.routing_key, countdown)


class DelayedDelivery:
    """Native delayed delivery for one transport: declares the delay levels and binds a queue
    the first time a channel needs it (a consumer starting on a queue, or a publisher parking
    a message for one), so no parked message meets a missing exchange or binding.

    Thread-safe: the table of what each channel has done is guarded by ``_lock``; a channel's
    declarations run on its own loop (the caller's).
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._lock = threading.Lock()
        self._done: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()

    async def ensure(self, channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
        """Make ``queue`` reachable through ``celery_delayed_delivery`` when the topology uses
        quorum queues, as an upstream worker does at start."""
        if not self.topology.uses_quorum([queue]):  # upstream: detect_quorum_queues, not the flag
            return
        with self._lock:
            done = self._done.setdefault(channel, set())
            if queue in done:
                return
            levels = not done
        if levels:
            await _declare_levels(channel, self.topology.delayed_queue_type)
        await _bind_queue(channel, self.topology.queue(queue))
        with self._lock:
            done.add(queue)

    async def park(self, channel: aio_pika.abc.AbstractChannel,
                   message: Message) -> tuple[str, str] | None:
        """Where to publish ``message`` if it is to be parked (``parked_target``), after making
        sure the levels and its queue's binding exist; ``None`` to publish as usual."""
        target = parked_target(self.topology, message)
        if target is not None:
            await self.ensure(channel, message.queue or message.routing_key)
        return target
