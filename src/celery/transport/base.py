"""The transport contract: publish, fetch a batch, ack/requeue/reject in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

from ..messaging.protocol import Message

__all__ = [
    "CAP_BROADCAST", "CAP_DELAYED", "CAP_EARLY", "CAP_LEASE", "CAP_PRIORITY", "CAP_VISIBILITY_TIMEOUT",
    "EARLY_ACKED", "EARLY_ALONE", "EARLY_KEPT", "Delivery", "EarlyHandler", "FanoutSubscription",
    "Mailbox", "Transport",
]

#: The transport orders messages by priority.
CAP_PRIORITY = "priority"
#: Unacked messages return to their queue after a visibility timeout (no server-side channel).
CAP_VISIBILITY_TIMEOUT = "visibility_timeout"
#: The transport holds back messages until their ETA (the ``eta`` header).
CAP_DELAYED = "delayed"
#: The transport implements ``Mailbox`` (fanout and direct exchanges): remote control.
CAP_BROADCAST = "broadcast"
#: ``fetch`` takes ``early``: a message that a blocking wait popped is handed over before it
#: is recorded as reserved, and is never recorded if the handler settled it on the spot.
CAP_EARLY = "early"
#: The transport makes beat leader leases: ``leader_lease(name) -> lease.LeaderLease``.
CAP_LEASE = "lease"


@dataclass(slots=True, eq=False)
class Delivery:
    """A received message plus what the transport needs to ack, requeue or reject it.

    A Delivery is created on the consumer's event loop and may be read from any thread;
    only the consumer's loop acks it (through the transport).
    """

    message: Message
    #: Unique per delivery; the ack handle.
    delivery_tag: str
    #: The queue it was fetched from (the logical name, not a priority sub-queue).
    queue: str
    #: The transport's own form of the message, kept to requeue it unchanged.
    raw: Any = None
    redelivered: bool = False
    #: AMQP-style delivery info as Celery's ``request.delivery_info`` shows it.
    delivery_info: dict[str, Any] = field(default_factory=dict)


#: ``fetch(..., early=handler)`` (CAP_EARLY): called on the fetching loop with a delivery not
#: yet recorded as reserved; returns a true value if it acked that delivery already (no ack
#: follows): ``EARLY_ALONE`` if that task is then the consumer's only one, else
#: ``EARLY_ACKED``; ``EARLY_KEPT`` (false) if the delivery must be recorded.
EarlyHandler: TypeAlias = Callable[[Delivery], int]
EARLY_KEPT, EARLY_ACKED, EARLY_ALONE = 0, 1, 2


@runtime_checkable
class Transport(Protocol):
    """A client for one broker.

    Thread-safety: ``publish`` may be called from any thread at any time. Every coroutine
    may be awaited on any event loop; a transport keeps one connection pool per loop
    (asyncio clients are bound to the loop that made them).

    Acknowledgement model: ``fetch`` hands out at most ``max_count`` deliveries and keeps
    each of them reserved (unacked) until ``ack``, ``requeue`` or ``reject`` settles it, or
    until the broker redelivers it because this consumer died (a visibility timeout on
    Redis, the channel closing on AMQP).
    """

    #: Features the broker has natively: a subset of the CAP_* names above.
    capabilities: frozenset[str]
    url: str

    def publish(self, message: Message) -> None:
        """Send one message. Blocking; safe from any thread (uses a connection pool)."""

    async def apublish(self, message: Message) -> None:
        """Send one message from the running event loop."""

    async def apublish_many(self, messages: Sequence[Message]) -> None:
        """Send several messages in as few round trips as the broker allows."""

    async def declare(self, queues: Iterable[str]) -> None:
        """Make sure the queues exist and are bound, as the broker needs for routing."""

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        """Reserve up to ``max_count`` messages from ``queues`` (in order of preference).

        Returns as soon as at least one message is there; waits at most ``timeout``
        seconds and returns ``[]`` when none came.
        """

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle deliveries as done: they are removed from the broker for good."""

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give deliveries back to their queues at once, to be delivered again."""

    async def reject(self, deliveries: Sequence[Delivery], requeue: bool = False) -> None:
        """Refuse deliveries: requeue them, or drop them (dead-letter where supported)."""

    async def restore_visible(self) -> int:
        """Return reserved messages whose consumer is gone to their queues; returns a count."""

    async def purge(self, queue: str) -> int:
        """Delete every waiting message in ``queue``; returns how many were deleted."""

    async def queue_length(self, queue: str) -> int:
        """Number of messages waiting in ``queue``."""

    async def ping(self) -> None:
        """Raise ConnectionLost if the broker cannot be reached."""

    def close(self) -> None:
        """Release sync resources (connection pools). Idempotent."""

    async def aclose(self) -> None:
        """Release the running loop's connections. Idempotent."""


@runtime_checkable
class FanoutSubscription(Protocol):
    """One subscriber of a fanout exchange (``Mailbox.fanout_subscribe``). Used from the
    event loop that made it."""

    async def get(self, timeout: float) -> list[str]:
        """Payloads published to the exchange since the last call, in publish order; waits
        up to ``timeout`` seconds for the first one, ``[]`` when none came. Raises
        ConnectionLost when the broker is gone (the caller subscribes again)."""
        ...

    async def close(self) -> None:
        """Stop receiving; idempotent."""
        ...


@runtime_checkable
class Mailbox(Protocol):
    """What remote control (kombu's "pidbox") needs from a broker; transports with
    ``CAP_BROADCAST`` implement it. Payloads are kombu JSON envelopes as strings
    (``envelope.encode``), stored and delivered unchanged.

    * A **fanout** exchange (``celery.pidbox``) delivers a copy of each payload to every
      subscriber that was subscribed when it was published; nothing is kept for later
      subscribers (Redis PUBLISH semantics).
    * A **direct** exchange (``reply.celery.pidbox``) is a binding table: ``direct_publish``
      pushes the payload onto every queue bound with that routing key (kombu's
      ``_kombu.binding.<exchange>`` set on Redis); ``pop_raw`` takes from such a queue.

    Every coroutine may be awaited on any event loop.
    """

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        """Deliver ``payload`` to every current subscriber of ``exchange``. A
        ``routing_key`` (events: ``task.multi``) goes where kombu puts it: on Redis the
        channel ``<exchange>/<routing key>``; elsewhere only in the envelope's
        ``delivery_info``, which subscribers filter on."""
        ...

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> FanoutSubscription:
        """Subscribe to ``exchange``; payloads published from now on are received.

        ``routing_key`` (a topic pattern such as ``#`` or ``worker.#``) also asks for the
        payloads other clients published *with* a routing key: kombu's Redis transport puts
        those on the channel ``<exchange>/<routing key>`` (``fanout_patterns``), which is how
        upstream Celery sends events (``/0.celeryev/worker.heartbeat``). Brokers whose
        ``fanout_publish`` carries no routing key deliver every payload of the exchange
        either way; a subscriber that needs an exact match filters on the envelope's
        ``delivery_info.routing_key``.
        """
        ...

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Bind ``queue`` to ``exchange`` with ``routing_key`` (idempotent)."""
        ...

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Remove that binding and delete the queue's waiting payloads (idempotent)."""
        ...

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        """Push ``payload`` onto every queue bound to ``exchange`` with ``routing_key``;
        how many queues got it (0: nobody listens, the payload is dropped)."""
        ...

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        """Remove and return the payloads waiting in ``queue`` (oldest first, no ack),
        waiting up to ``timeout`` seconds for the first; ``[]`` on timeout."""
        ...
