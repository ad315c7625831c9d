"""Remote control and events (``Mailbox``) on RabbitMQ, declared as kombu and Celery declare them.

* ``<control_exchange>.pidbox`` (``celery.pidbox``): a **fanout** exchange, not durable, not
  auto-deleted (kombu's ``Mailbox`` exchange). Each subscriber gets a queue of its own,
  ``<uuid>.celery.pidbox`` (kombu names a worker's ``<hostname>.celery.pidbox``), bound to
  it: not durable, not exclusive, auto-deleted, ``x-message-ttl`` 300 s and ``x-expires`` 10 s
  (Celery's ``control_queue_ttl``/``control_queue_expires``).
* Any other fanout name, such as ``celeryev`` (the ``event_exchange``), is Celery's events
  exchange: a **topic** exchange, durable, not auto-deleted; a payload published with a
  routing key (``worker.heartbeat``, ``task.multi``) carries it as the real AMQP routing key.
  A subscriber's queue ``celeryev.<uuid>`` is bound with its pattern (``#``: everything):
  not durable, not exclusive, auto-deleted, ``x-message-ttl`` 5 s and ``x-expires`` 60 s
  (Celery's ``event_queue_ttl``/``event_queue_expires``).
* Direct exchanges (``reply.celery.pidbox``): **direct**, not durable, not auto-deleted
  (kombu's reply exchange). A direct queue (a remote-control client's reply queue) is named
  by its caller; not durable, ``x-message-ttl`` 300 s and ``x-expires`` 10 s as Celery's reply
  queues, but not auto-deleted: ``direct_unbind`` must be able to remove one binding and
  keep the others, and ``x-expires`` removes the queue 10 s after its last use. Its names
  are ours alone, so its flags never meet a declaration of upstream's.

Flags match upstream's, so upstream Celery and we declare the same exchanges without
``PRECONDITION_FAILED``: an upstream ``celery inspect`` reaches our workers and ours reaches
theirs. ``control_queue_durable``/``_exclusive`` and ``event_queue_durable``/``_exclusive``
(``MailboxQueueSettings``) change the queues' flags as they change Celery's.

Payloads are kombu envelopes (``transport/envelope.py``) on our side of the protocol; on the
wire each is the AMQP message it stands for, as kombu on py-amqp publishes it, and a received
message becomes an envelope again (amqp_envelope.py: ``to_amqp``, ``from_amqp``).

AMQP cannot say how many queues a message reached: ``direct_publish`` publishes it
``mandatory`` on a confirmed channel and answers 1 when the broker routed it (to one queue
or more), 0 when the broker returned it unroutable.

Thread-safety: every coroutine may be awaited on any event loop; it uses that loop's channels
(``Connections.channel("mailbox")`` for remote control, ``("events")`` for events). The
per-loop state (reply-queue consumers) lives in ``_states`` (loop -> _LoopState) under
``_lock``; a ``_LoopState`` and a subscription are then used only from their own loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..exceptions import ConnectionLost, ImproperlyConfigured, OperationalError
from .amqp_connection import Connections, driver_errors
from .amqp_envelope import from_amqp, to_amqp

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractQueue,
        AbstractRobustChannel,
    )

__all__ = ["AMQPMailbox", "AMQPSubscription", "MailboxQueueSettings", "exchange_kind"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How many waiting payloads one ``pop_raw`` takes at most.
MAX_POP = 1000


@dataclass(frozen=True, slots=True)
class MailboxQueueSettings:
    """How the mailbox declares its queues: Celery's settings of the same names and defaults
    (seconds; ``None`` leaves the argument out). ``*_durable`` queues are not auto-deleted;
    ``*_exclusive`` ones belong to the connection that made them (RabbitMQ 4 refuses
    transient queues that are neither)."""

    control_queue_ttl: float | None = 300.0
    control_queue_expires: float | None = 10.0
    control_queue_durable: bool = False
    control_queue_exclusive: bool = False
    event_queue_ttl: float | None = 5.0
    event_queue_expires: float | None = 60.0
    event_queue_durable: bool = False
    event_queue_exclusive: bool = False

    def __post_init__(self) -> None:
        for kind in ("control", "event"):
            if getattr(self, f"{kind}_queue_durable") and getattr(self, f"{kind}_queue_exclusive"):
                raise ImproperlyConfigured(
                    f"{kind}_queue_durable and {kind}_queue_exclusive cannot both be set: an "
                    "exclusive queue is deleted with its connection")

    @classmethod
    def from_conf(cls, conf: Any) -> MailboxQueueSettings:
        """The settings of an app's ``conf`` (missing ones: Celery's defaults)."""
        defaults = cls()
        return cls(**{name: conf.get(name, getattr(defaults, name))
                      for name in cls.__dataclass_fields__})


def _ttl_arguments(ttl: float | None, expires: float | None) -> dict[str, Any]:
    """``x-message-ttl``/``x-expires`` in milliseconds, as kombu's ``Queue`` sets them."""
    arguments: dict[str, Any] = {}
    if ttl is not None:
        arguments["x-message-ttl"] = int(ttl * 1000)
    if expires is not None:
        arguments["x-expires"] = int(expires * 1000)
    return arguments


def exchange_kind(exchange: str) -> tuple[str, bool]:
    """``(type, durable)`` of a fanout-style exchange by its name: ``*.pidbox`` is kombu's
    mailbox exchange (fanout, transient); anything else is Celery's events exchange (topic,
    durable)."""
    if exchange.endswith(".pidbox"):
        return "fanout", False
    return "topic", True


class _DirectConsumer:
    """A consumer (no ack, as kombu's reply consumer) of one direct queue on one loop; the
    payloads it receives wait in ``arrived`` for ``pop_raw``. Its loop only."""

    __slots__ = ("arrived", "queue", "tag", "underlay", "where")

    def __init__(self, queue: AbstractQueue, underlay: Any) -> None:
        self.queue = queue
        self.underlay = underlay  # the aiormq channel it consumes on: dead when that closes
        self.arrived: asyncio.Queue[str] = asyncio.Queue()
        self.tag: str | None = None
        self.where = f"reply queue {queue.name!r}"

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        payload = from_amqp(message, self.where)
        if payload is not None:
            self.arrived.put_nowait(payload)

    @property
    def alive(self) -> bool:
        return not self.underlay.is_closed

    def take(self) -> list[str]:
        taken: list[str] = []
        while len(taken) < MAX_POP:
            try:
                taken.append(self.arrived.get_nowait())
            except asyncio.QueueEmpty:
                break
        return taken


class _LoopState:
    """One loop's reply-queue consumers and declared exchanges. Used only from that loop."""

    __slots__ = ("consumers", "declared")

    def __init__(self) -> None:
        self.consumers: dict[str, _DirectConsumer] = {}
        #: aiormq channel -> the exchanges declared on it (a re-opened channel re-declares).
        self.declared: weakref.WeakKeyDictionary[Any, dict[str, AbstractExchange]] = \
            weakref.WeakKeyDictionary()


class AMQPMailbox:
    """kombu's pidbox and Celery's events exchange over a ``Connections`` (one per transport)."""

    def __init__(self, connections: Connections,
                 settings: MailboxQueueSettings | None = None) -> None:
        self.connections = connections
        self.settings = settings or MailboxQueueSettings()
        self._lock = threading.Lock()  # guards _states
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = \
            weakref.WeakKeyDictionary()

    # -- plumbing ---------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.get(loop)
            if state is None:
                state = self._states[loop] = _LoopState()
            return state

    @property
    def _wait(self) -> float:
        """How long to wait for a reconnecting connection before giving up."""
        return float(self.connections.params.connect_timeout or 4.0) + 1.0

    async def _guard(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, turning driver errors into ConnectionLost and a channel-level refusal
        (a declaration that does not match the server's) into OperationalError, one line."""
        from aiormq.exceptions import ChannelClosed

        try:
            # A robust channel waits for its reconnection forever: bound that wait.
            return await asyncio.wait_for(op(), 2 * max(self._wait, 5.0))
        except ConnectionLost:
            raise
        except ChannelClosed as exc:
            raise OperationalError(f"RabbitMQ refused the mailbox's {what}: "
                                   f"{_first_line(exc)}") from exc
        except driver_errors() as exc:
            raise ConnectionLost(f"{what} on {self.connections.params.safe_url}: "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from exc

    async def _channel(self, purpose: str) -> tuple[AbstractRobustChannel, Any]:
        """The loop's ``purpose`` channel and its current aiormq channel (which changes when
        the robust channel re-opens)."""
        channel = await self.connections.channel(purpose)
        try:
            underlay = await asyncio.wait_for(channel.get_underlay_channel(), self._wait)
        except driver_errors() as exc:
            raise ConnectionLost(f"mailbox channel on {self.connections.params.safe_url}: "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return channel, underlay

    async def _exchange(self, channel: AbstractRobustChannel, underlay: Any, name: str,
                        type_: str, durable: bool) -> AbstractExchange:
        """Declare ``name`` once per aiormq channel (again after a re-open: a transient
        exchange is gone after a broker restart); the exchange object either way."""
        declared = self._state().declared.setdefault(underlay, {})
        exchange = declared.get(name)
        if exchange is None:
            exchange = declared[name] = await channel.declare_exchange(
                name, type_, durable=durable, auto_delete=False, robust=False)
        return exchange

    def _purpose(self, exchange: str) -> str:
        return "mailbox" if exchange_kind(exchange)[0] == "fanout" else "events"

    def _direct_arguments(self) -> dict[str, Any]:
        s = self.settings
        return _ttl_arguments(s.control_queue_ttl, s.control_queue_expires)

    # -- fanout ------------------------------------------------------------------------------

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        """Publish to the fanout (``*.pidbox``) or topic (events) exchange; ``routing_key``
        is the AMQP routing key (a fanout exchange ignores it)."""
        kind, durable = exchange_kind(exchange)

        async def publish() -> None:
            channel, underlay = await self._channel(self._purpose(exchange))
            target = await self._exchange(channel, underlay, exchange, kind, durable)
            await target.publish(to_amqp(payload), routing_key or "", mandatory=False)

        await self._guard(f"publish to {exchange!r}", publish)

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> AMQPSubscription:
        """A queue of this subscriber's own bound to ``exchange`` (with ``routing_key``, a
        topic pattern, on the events exchange: ``#`` when none), consumed without acks."""
        kind, durable = exchange_kind(exchange)
        s = self.settings
        if kind == "fanout":
            name = f"{uuid.uuid4()}.{exchange}"
            arguments = _ttl_arguments(s.control_queue_ttl, s.control_queue_expires)
            queue_durable, exclusive = s.control_queue_durable, s.control_queue_exclusive
        else:
            name = f"{exchange}.{uuid.uuid4()}"
            arguments = _ttl_arguments(s.event_queue_ttl, s.event_queue_expires)
            queue_durable, exclusive = s.event_queue_durable, s.event_queue_exclusive
        purpose = self._purpose(exchange)

        async def subscribe() -> AMQPSubscription:
            channel, underlay = await self._channel(purpose)
            target = await self._exchange(channel, underlay, exchange, kind, durable)
            queue = await channel.declare_queue(name, durable=queue_durable, exclusive=exclusive,
                                                auto_delete=not queue_durable,
                                                arguments=arguments, robust=False)
            await queue.bind(target, (routing_key or "#") if kind == "topic" else "")
            subscription = AMQPSubscription(self, queue, underlay, exchange)
            subscription.tag = await queue.consume(subscription.on_message, no_ack=True)
            return subscription

        return await self._guard(f"subscribe to {exchange!r}", subscribe)

    # -- direct ------------------------------------------------------------------------------

    async def _direct_queue(self, queue: str) -> tuple[AbstractRobustChannel, Any, AbstractQueue]:
        channel, underlay = await self._channel("mailbox")
        s = self.settings
        declared = await channel.declare_queue(
            queue, durable=s.control_queue_durable, exclusive=s.control_queue_exclusive,
            auto_delete=False, arguments=self._direct_arguments(), robust=False)
        return channel, underlay, declared

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        async def bind() -> None:
            channel, underlay, declared = await self._direct_queue(queue)
            target = await self._exchange(channel, underlay, exchange, "direct", False)
            await declared.bind(target, routing_key)

        await self._guard(f"bind {queue!r}", bind)

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Unbind, stop this loop's consumer of the queue and purge what waits in it (its
        other bindings stay; ``x-expires`` deletes it once unused)."""
        async def unbind() -> None:
            consumer = self._state().consumers.pop(queue, None)
            if consumer is not None and consumer.alive and consumer.tag is not None:
                await consumer.queue.cancel(consumer.tag)
            channel, underlay, declared = await self._direct_queue(queue)
            target = await self._exchange(channel, underlay, exchange, "direct", False)
            await declared.unbind(target, routing_key)
            await declared.purge()

        await self._guard(f"unbind {queue!r}", unbind)

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        """Publish ``mandatory``: 1 if the broker routed it to a queue, 0 if it returned it
        (nobody bound with ``routing_key``)."""
        from aiormq.abc import DeliveredMessage

        async def publish() -> int:
            channel, underlay = await self._channel("mailbox")
            target = await self._exchange(channel, underlay, exchange, "direct", False)
            result = await target.publish(to_amqp(payload), routing_key, mandatory=True)
            return 0 if isinstance(result, DeliveredMessage) else 1

        return await self._guard(f"publish to {exchange!r}", publish)

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        """Payloads that this loop's consumer of ``queue`` received, oldest first; the first
        call starts it (and declares the queue, so that popping a queue nobody made is an
        empty answer, not a channel error)."""
        state = self._state()
        consumer = state.consumers.get(queue)
        leftover: list[str] = []
        if consumer is None or not consumer.alive:
            if consumer is not None:  # its channel closed: keep what it had received
                leftover = consumer.take()
                del state.consumers[queue]
            consumer = state.consumers[queue] = await self._guard(
                f"consume {queue!r}", lambda: self._start_consumer(queue))
        taken = leftover + consumer.take()
        if not taken and timeout > 0:
            try:
                first = await asyncio.wait_for(consumer.arrived.get(), timeout)
            except TimeoutError:
                return []
            taken = [first, *consumer.take()]
        return taken

    async def _start_consumer(self, queue: str) -> _DirectConsumer:
        _, underlay, declared = await self._direct_queue(queue)
        consumer = _DirectConsumer(declared, underlay)
        consumer.tag = await declared.consume(consumer.on_message, no_ack=True)
        return consumer


class AMQPSubscription:
    """One subscriber's queue and consumer (``AMQPMailbox.fanout_subscribe``); its loop only.

    When its channel closes (the connection dropped, the broker restarted), ``get`` raises
    ConnectionLost once what had arrived is taken: the caller subscribes again.
    """

    def __init__(self, mailbox: AMQPMailbox, queue: AbstractQueue, underlay: Any,
                 exchange: str) -> None:
        self._mailbox = mailbox
        self._queue: AbstractQueue | None = queue
        self._underlay = underlay
        self._where = f"exchange {exchange!r}"
        self._arrived: asyncio.Queue[str] = asyncio.Queue()
        self.tag: str | None = None

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if self._queue is not None:
            payload = from_amqp(message, self._where)
            if payload is not None:
                self._arrived.put_nowait(payload)

    def _take(self) -> list[str]:
        taken: list[str] = []
        while True:
            try:
                taken.append(self._arrived.get_nowait())
            except asyncio.QueueEmpty:
                return taken

    async def get(self, timeout: float) -> list[str]:
        if self._queue is None:  # closed
            return []
        taken = self._take()
        if not taken:
            if self._underlay.is_closed:  # what arrived before is taken: resubscribe now
                raise ConnectionLost(f"the subscription to {self._where} lost its channel")
            try:
                first = await asyncio.wait_for(self._arrived.get(), max(timeout, 0.0))
            except TimeoutError:
                return []
            taken = [first, *self._take()]
        return taken

    async def close(self) -> None:
        """Cancel the consumer and delete the queue (auto-delete would too); idempotent,
        quiet when the broker is already gone."""
        queue, self._queue = self._queue, None
        if queue is None:
            return
        self._take()
        if self._underlay.is_closed:
            return
        try:
            if self.tag is not None:
                await queue.cancel(self.tag)
            await queue.delete(if_unused=False, if_empty=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the queue or the connection is already gone
            logger.debug("closing the subscription to %s: %r", self._where, exc)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
