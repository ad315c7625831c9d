"""RabbitMQ transport (``amqp://``, ``amqps://``, ``pyamqp://``) on aio-pika.

Messages go on the wire as kombu's py-amqp transport puts Celery's (amqp_wire.py), to the
exchanges and queues Celery declares (amqp_topology.py), so upstream Celery workers and
clients on the same virtual host read ours and we theirs.

Connections (amqp_connection.py): one robust connection per event loop, reconnecting by
itself and declaring again what it declared. Sync ``publish`` (any thread) runs ``apublish``
on the app's portal loop, so sync callers share that loop's one connection; without
confirms, once a queue is declared, it writes from the caller's thread instead, on the
process's one blocking connection (amqp_direct.py), which costs a quarter of the CPU.

Publishing: on the loop's ``publish`` channel, with publisher confirms unless the transport
option ``confirm_publish`` is false, so a ``publish`` that returned was accepted by the
broker. The first publish to a queue on a connection declares it (with its exchange and
binding), as upstream's producer does, so a message sent before any worker started is kept.
A publish that fails because the broker is unreachable is retried as Celery's
``task_publish_retry_policy`` says (``task_publish_retry``), then raises ``ConnectionLost``
(an ``OperationalError``).

Consuming (amqp_consume.py): ``basic_consume`` per queue, QoS at the consumer's window plus
the ETA messages it holds (``set_prefetch``), acks batched with ``multiple=True`` where the
order allows, unstarted prefetched messages requeued at once on ``stop_consuming``.

Redelivery: RabbitMQ requeues whatever a consumer left unacked when its channel or
connection closes, so ``restore_visible`` has nothing to do (returns 0). A requeued message
goes back to its original place in the queue (not the back), marked ``redelivered``.

Remote control and events (``Mailbox``, ``CAP_BROADCAST``): delegated to ``AMQPMailbox``
(amqp_mailbox.py) on the same connections: kombu's pidbox exchanges and Celery's ``celeryev``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aio_pika.exceptions import ChannelInvalidStateError

from ..exceptions import ConnectionLost, ImproperlyConfigured
from ..messaging.protocol import Message
from ..utils.portal import Portal
from .amqp_connection import Connections, driver_errors, parse_amqp_url
from .amqp_consume import ACK, DROP, REQUEUE, Consuming, settle
from .amqp_delayed import DelayedDelivery, parked_target
from .amqp_direct import DirectPublisher
from .amqp_envelope import encode_floats_as_doubles
from .amqp_mailbox import AMQPMailbox, AMQPSubscription, MailboxQueueSettings
from .amqp_topology import Topology, declare_exchanges, declare_queue
from .amqp_wire import to_amqp
from .base import CAP_BROADCAST, Delivery

if TYPE_CHECKING:
    from aio_pika.abc import AbstractQueue, AbstractRobustChannel

    from .amqp_codec import Properties

__all__ = ["AMQPTransport"]

logger = logging.getLogger(__name__)

#: Transport options this transport reads; others are warned about once.
KNOWN_OPTIONS = frozenset({"confirm_publish", "direct_publish", "reconnect_interval"})
#: Celery's default ``task_publish_retry_policy``.
DEFAULT_RETRY_POLICY: Mapping[str, float] = {
    "max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1,
}


class AMQPTransport:
    """A RabbitMQ client. ``publish`` may be called from any thread; coroutines on any loop
    (one connection per loop, amqp_connection.py). ``_lock`` guards ``_consuming`` and
    ``_declared`` (per-loop tables read from any thread)."""

    #: No CAP_PRIORITY: RabbitMQ orders by priority only in queues declared with
    #: ``x-max-priority`` (``task_queue_max_priority`` or the queue's own argument), and
    #: there a higher number goes first (on Redis 0 does). No CAP_VISIBILITY_TIMEOUT: the
    #: server redelivers when a consumer's channel closes.
    capabilities: frozenset[str] = frozenset({CAP_BROADCAST})
    driver_type = "amqp"

    def __init__(self, url: str, *, transport_options: Mapping[str, Any] | None = None,
                 connection_timeout: float | None = None, max_connections: int | None = None,
                 topology: Topology | None = None, heartbeat: float | None = None,
                 use_ssl: Any = None, portal: Portal | None = None,
                 publish_retry: bool = True,
                 publish_retry_policy: Mapping[str, Any] | None = None,
                 mailbox_settings: MailboxQueueSettings | None = None,
                 **_ignored: Any) -> None:
        options = dict(transport_options or {})
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            logger.warning("AMQP transport: ignoring broker_transport_options %s (not used on "
                           "RabbitMQ; known: %s)", ", ".join(unknown), ", ".join(sorted(KNOWN_OPTIONS)))
        self.url = url
        self.params = parse_amqp_url(url, transport_options=options,
                                     connection_timeout=connection_timeout,
                                     heartbeat=heartbeat, use_ssl=use_ssl)
        self.connections = Connections(self.params)
        self.topology = topology or Topology.default()
        #: Remote control and events (the Mailbox methods below delegate to it).
        self.mailbox = AMQPMailbox(self.connections, mailbox_settings)
        encode_floats_as_doubles()  # float headers (timelimit, expires) as py-amqp sends them
        self._delayed = DelayedDelivery(self.topology)
        self._portal = portal
        self._own_portal: Portal | None = None
        policy = dict(DEFAULT_RETRY_POLICY)
        policy.update(publish_retry_policy or {})
        self._retries = int(policy["max_retries"] or 0) if publish_retry else 0
        self._policy = policy
        #: Sync publishes without confirms go out from the caller's thread (amqp_direct.py),
        #: unless the transport option ``direct_publish`` is false.
        direct = options.get("direct_publish", True)
        if not isinstance(direct, bool):
            raise ImproperlyConfigured(f"broker_transport_options direct_publish: {direct!r} "
                                       "is not true or false")
        #: Not over TLS (amqps://) yet: there they go through the portal, as with confirms.
        self._direct = None if self.params.confirm_publish or not direct or self.params.ssl \
            else DirectPublisher(self.params, retries=self._retries, delays=self._retry_delay)
        self._lock = threading.Lock()
        self._consuming: dict[asyncio.AbstractEventLoop, Consuming] = {}
        #: (loop, channel) -> names of the queues declared through that channel.
        self._declared: dict[tuple[asyncio.AbstractEventLoop, Any], set[str]] = {}

    def __repr__(self) -> str:
        return f"<AMQPTransport {self.params.safe_url}>"

    # -- publishing ----------------------------------------------------------------------

    def _portal_now(self) -> Portal:
        if self._portal is not None:
            return self._portal
        with self._lock:
            if self._own_portal is None:
                self._own_portal = Portal("celery-amqp-portal")
            return self._own_portal

    def publish(self, message: Message) -> None:
        """Publish from any thread (not the portal's own): without confirms, in this thread
        on the direct publisher when the queue is ready there (amqp_direct.py); else
        ``apublish`` on the portal loop."""
        direct = self._direct
        if direct is None:
            self._portal_now().call(self.apublish(message))
            return
        needs = _declares(message)
        if (needs is None or direct.ready(needs)) and parked_target(self.topology,
                                                                    message) is None:
            exchange, routing_key, properties = self._wire(message)
            if direct.publish(exchange, routing_key, message.body, properties, needs):
                return
        self._portal_now().call(self.apublish(message))
        if needs is not None:  # the portal path declared it: later ones go direct
            direct.mark_ready(needs)

    async def apublish(self, message: Message) -> None:
        """Publish one message from the running loop; returns once the broker confirmed it."""
        await self._with_retries(lambda channel: self._publish(channel, message))

    async def apublish_many(self, messages: Sequence[Message]) -> None:
        """Publish several messages, confirmed together (one round trip's wait)."""
        if messages:
            await self._with_retries(lambda channel: asyncio.gather(
                *(self._publish(channel, m) for m in messages)))

    def _retry_delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt + 1`` of a failed publish (the policy's)."""
        policy = self._policy
        start = float(policy["interval_start"] or 0)
        if attempt == 0:
            return start
        return min(start + attempt * float(policy["interval_step"] or 0),
                   float(policy["interval_max"] or 0))

    async def _with_retries(self, send: Any) -> None:
        retryable: tuple[type[BaseException], ...] = (*driver_errors(), ConnectionLost)
        for attempt in range(self._retries + 1):
            try:
                channel = await self._publish_channel()
                await send(channel)
                return
            except asyncio.CancelledError:
                raise
            except retryable as exc:
                if attempt >= self._retries:
                    raise ConnectionLost(
                        f"Publish to {self.params.safe_url} failed after {attempt + 1} "
                        f"attempt(s): {_one_line(exc)}") from exc
                logger.debug("publish to %s failed (%r); retrying in %.1fs",
                             self.params.safe_url, exc, self._retry_delay(attempt))
            await asyncio.sleep(self._retry_delay(attempt))

    async def _publish_channel(self) -> AbstractRobustChannel:
        conn = await self.connections.connection()
        if not conn.connected.is_set():  # reconnecting: wait a little, not forever
            wait = self.params.reconnect_interval + 0.5
            try:
                await asyncio.wait_for(conn.connected.wait(), wait)
            except TimeoutError:
                raise ConnectionLost(f"{self.params.safe_url} is unreachable "
                                     f"(reconnecting)") from None
        return await self.connections.channel("publish", confirms=self.params.confirm_publish)

    def _wire(self, message: Message) -> tuple[str, str, Properties]:
        """The exchange (``""``: the default one), routing key and properties to publish
        ``message`` with, as upstream's producer picks them."""
        topology, queue = self.topology, message.queue
        exchange, routing_key = topology.target(message.exchange, message.routing_key, queue=queue)
        properties = to_amqp(message, topology.delivery_mode(message.exchange, message.routing_key,
                                                             queue=queue)
                             if "delivery_mode" not in message.properties else 2)
        return exchange or "", routing_key, properties

    async def _publish(self, channel: AbstractRobustChannel, message: Message) -> None:
        exchange, routing_key, properties = self._wire(message)
        needs = _declares(message)
        if needs is not None:  # routed to a queue: declare it first, as upstream's producer
            await self._ensure_declared(channel, [needs])
        parked = await self._delayed.park(channel, message)
        if parked is not None:  # quorum queues: countdown/ETA parked in the broker, as upstream
            exchange, routing_key = parked
        if channel.is_closed:
            raise ChannelInvalidStateError(f"{channel!r} is closed")
        # On aiormq's channel under the robust one (as aio-pika's Exchange.publish does,
        # without its Message object): mandatory, so an unroutable message is returned.
        underlay = await channel.get_underlay_channel()
        await underlay.basic_publish(message.body, exchange=exchange,
                                     routing_key=routing_key, properties=properties,
                                     mandatory=True, timeout=self.params.connect_timeout or None)

    async def _ensure_declared(self, channel: AbstractRobustChannel,
                               names: Iterable[str]) -> None:
        key = (asyncio.get_running_loop(), channel)
        with self._lock:
            done = self._declared.setdefault(key, set())
            missing = [n for n in names if n not in done]
        for name in missing:
            decl = self.topology.queue(name)
            if decl.broadcast:  # its queue is each consumer's own: only the exchange here
                await declare_exchanges(channel, decl)
            else:
                await declare_queue(channel, decl)
            with self._lock:
                done.add(name)

    async def _declare_on(self, channel: AbstractRobustChannel, name: str) -> AbstractQueue:
        queue = await declare_queue(channel, self.topology.queue(name))
        await self._delayed.ensure(channel, name)  # quorum queues: Celery 5.5's delay levels
        with self._lock:
            self._declared.setdefault((asyncio.get_running_loop(), channel), set()).add(name)
        return queue

    async def declare(self, queues: Iterable[str]) -> None:
        """Declare each queue with its exchanges and bindings, as Celery does."""
        try:
            channel = await self.connections.channel("publish", confirms=self.params.confirm_publish)
            for name in queues:
                await self._declare_on(channel, name)
        except driver_errors() as exc:
            raise ConnectionLost(f"AMQP declare on {self.params.safe_url} failed: "
                                 f"{_one_line(exc)}") from exc

    # -- consuming -----------------------------------------------------------------------

    def _consumer_here(self) -> Consuming:
        loop = asyncio.get_running_loop()
        with self._lock:
            consuming = self._consuming.get(loop)
            if consuming is None:
                for dead in [lp for lp in self._consuming if lp.is_closed()]:
                    del self._consuming[dead]
                global_qos = self.topology.global_qos()
                consuming = self._consuming[loop] = Consuming(
                    self.connections, self._declare_on, global_qos,
                    lambda name: self.topology.queue(name).consumer_arguments)
            return consuming

    def set_prefetch(self, count: int) -> None:
        """The consumer's window plus the ETA messages it holds: the most unacked messages
        RabbitMQ sends this loop's consumer (applied on the next ``fetch``). Call on the
        consuming loop."""
        self._consumer_here().prefetch(count)

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        """Up to ``max_count`` prefetched messages from ``queues`` (in that order of
        preference), waiting up to ``timeout`` seconds for the first."""
        if not queues or max_count <= 0:
            return []
        return await self._consumer_here().fetch(queues, max_count, timeout)

    async def stop_consuming(self) -> int:
        """Stop consuming on this loop and requeue at once what was prefetched and never
        handed out; how many were requeued."""
        with self._lock:
            consuming = self._consuming.get(asyncio.get_running_loop())
        return 0 if consuming is None else await consuming.stop()

    async def _settle(self, deliveries: Sequence[Delivery], how: str) -> None:
        if deliveries:
            consuming = self._consumer_here()
            await settle(consuming.outstanding, [d.raw for d in deliveries], how)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, ACK)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, REQUEUE)

    async def reject(self, deliveries: Sequence[Delivery], requeue: bool = False) -> None:
        await self._settle(deliveries, REQUEUE if requeue else DROP)

    async def restore_visible(self) -> int:
        """Nothing to do: RabbitMQ redelivers what a closed channel left unacked."""
        return 0

    # -- queues --------------------------------------------------------------------------

    async def _queue_op(self, what: str, name: str, op: Any) -> Any:
        try:
            channel = await self.connections.channel("admin", confirms=False)
            queue = await channel.get_queue(name, ensure=True)  # a passive declare
            return await op(queue)
        except driver_errors() as exc:
            raise ConnectionLost(f"AMQP {what} of {name!r} on {self.params.safe_url} failed: "
                                 f"{_one_line(exc)}") from exc
        except Exception as exc:
            from aio_pika.exceptions import ChannelClosed

            if isinstance(exc, ChannelClosed):  # no such queue (the server closed the channel)
                self.connections.forget_channel("admin")
                return None
            raise

    async def purge(self, queue: str) -> int:
        """Delete the ready messages of ``queue`` (not those delivered and unacked)."""
        async def op(q: AbstractQueue) -> int:
            done = await q.purge()
            return int(done.message_count or 0)

        return await self._queue_op("purge", queue, op) or 0

    async def queue_length(self, queue: str) -> int:
        """Ready messages in ``queue`` (a passive declare); 0 for a queue that does not exist."""
        async def op(q: AbstractQueue) -> int:
            result = await q.declare()
            return int(result.message_count or 0)

        return await self._queue_op("queue_length", queue, op) or 0

    async def ping(self) -> None:
        await self.connections.channel("publish", confirms=self.params.confirm_publish)

    # -- remote control and events (Mailbox) ---------------------------------------------

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        await self.mailbox.fanout_publish(exchange, payload, routing_key)

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> AMQPSubscription:
        return await self.mailbox.fanout_subscribe(exchange, routing_key)

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        await self.mailbox.direct_bind(exchange, routing_key, queue)

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        await self.mailbox.direct_unbind(exchange, routing_key, queue)

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        return await self.mailbox.direct_publish(exchange, routing_key, payload)

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        return await self.mailbox.pop_raw(queue, timeout)

    # -- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the running loop's connection (unacked deliveries go back to their queues)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._consuming.pop(loop, None)
            for key in [k for k in self._declared if k[0] is loop]:
                del self._declared[key]
        await self.connections.aclose()

    def close(self) -> None:
        """Close every loop's connection and the transport's own portal, if it made one."""
        with self._lock:
            portal, self._own_portal = self._own_portal, None
        if portal is not None:
            portal.stop(self.connections.aclose())
        self.connections.close()
        if self._direct is not None:
            self._direct.close()
        with self._lock:
            self._consuming.clear()
            self._declared.clear()


def _declares(message: Message) -> str | None:
    """The queue a publish of ``message`` declares first (routed to a queue: the routed one,
    ``Message.queue``, when the sender gave a routing key too), or None (a named exchange)."""
    if not message.exchange or message.queue is not None:
        return message.queue or message.routing_key
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__
