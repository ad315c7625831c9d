"""``memory://``: an in-process broker, for tests and for trying things without a server.

Every transport object with the same URL in one process shares one broker (``memory://``
and ``memory://name`` are different brokers), as kombu's memory transport does, so an app's
producer and an in-process worker see the same queues. Nothing crosses process boundaries
and nothing survives the process.

Messages are kept as kombu's JSON envelope (``transport/envelope.py``), exactly as Redis
stores them, so malformed input, redelivery marks and priorities behave as on every other
transport. Priority: lower number first (0 is highest), as kombu's virtual transports; FIFO
within a priority. Across queues, priority comes first, then the order the queues are given
to ``fetch`` (kombu's Redis layout reads them that way). Reserved messages stay in the
broker until acked and return to their queue after ``visibility_timeout`` (transport option,
default 3600 s) via ``restore_visible``, or at once with ``requeue``.

Remote control (``Mailbox``, ``CAP_BROADCAST``): a fanout exchange is the set of its current
subscriptions, each with a buffer of its own (at most ``FANOUT_BUFFER`` payloads: a subscriber
that stops reading loses the oldest, with a warning, rather than growing without bound); a
direct exchange is a binding table ``(routing key, queue)``, and its queues are deques kept
apart from the task queues (``purge`` and ``queue_length`` never see them).

Thread-safety: one ``threading.Lock`` per broker (``_Broker.lock``) guards its queues,
reservations, dead letters, subscriptions, bindings and direct queues; it is held only for
in-memory list/heap operations, never while decoding or awaiting. Waiting consumers on any
event loop are woken through ``embedded.Wakeup`` (``_Broker.wakeup`` for task queues,
``_Broker.control`` for subscriptions and direct queues).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import DecodeError, ImproperlyConfigured
from ..messaging.protocol import Message
from . import envelope
from .base import CAP_BROADCAST, CAP_LEASE, CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT, Delivery
from .embedded import Shared, Wakeup, poll, url_name
from .lease import MemoryLease

__all__ = ["MemoryTransport"]

logger = logging.getLogger(__name__)

#: Payloads a fanout subscription holds before it drops the oldest.
FANOUT_BUFFER = 10_000

#: A queued message: (priority, sequence, delivery tag, envelope). Sequence numbers grow,
#: so a heap gives priority order, then FIFO; a requeued message keeps its old sequence.
_Entry = tuple[int, int, str, str]


@dataclass(eq=False)
class _Broker:
    lock: threading.Lock = field(default_factory=threading.Lock)
    queues: dict[str, list[_Entry]] = field(default_factory=dict)
    #: tag -> (queue, entry, reserved at (time.monotonic()))
    reserved: dict[str, tuple[str, _Entry, float]] = field(default_factory=dict)
    #: (queue, raw element, reason), for inspection; never dropped silently.
    dead: list[tuple[str, str, str]] = field(default_factory=list)
    wakeup: Wakeup = field(default_factory=Wakeup)
    seq: Any = field(default_factory=itertools.count)
    #: Deferred until their ETA: (due epoch, sequence, queue, entry), a heap.
    delayed: list[tuple[float, int, str, _Entry]] = field(default_factory=list)
    #: Fanout exchange -> its current subscriptions.
    subscribers: dict[str, set[_Subscription]] = field(default_factory=dict)
    #: Direct exchange -> its bindings ``(routing key, queue)``.
    bindings: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    #: Direct queue -> payloads, oldest first.
    direct: dict[str, deque[str]] = field(default_factory=dict)
    #: Wakes subscriptions and ``pop_raw`` waiters (not task fetchers).
    control: Wakeup = field(default_factory=Wakeup)


#: URL name -> broker, for the whole process.
_brokers: Shared[str, _Broker] = Shared(_Broker)


class MemoryTransport:
    """The in-process broker of one ``memory://`` URL. See the module docstring."""

    capabilities = frozenset({CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT, CAP_BROADCAST, CAP_LEASE})

    def __init__(self, url: str = "memory://", *, transport_options: dict[str, Any] | None = None,
                 **ignored: Any) -> None:
        options = dict(transport_options or {})
        try:
            self.visibility_timeout = float(options.get("visibility_timeout", 3600))
        except (TypeError, ValueError):
            raise ImproperlyConfigured(
                f"visibility_timeout must be a number of seconds, not "
                f"{options['visibility_timeout']!r}"
            ) from None
        self.url = url
        self._broker = _brokers.get(url_name(url))

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.url}>"

    def leader_lease(self, name: str) -> MemoryLease:
        """Beat's leader lease ``name`` among this process's beats (lease.py)."""
        return MemoryLease(f"{self.url}#{name}")

    # -- publishing ----------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        """Queue one message; never blocks on I/O, safe from any thread."""
        self._put([message])

    async def apublish(self, message: Message) -> None:
        self._put([message])

    async def apublish_many(self, messages: Sequence[Message]) -> None:
        self._put(messages)

    def _put(self, messages: Sequence[Message]) -> None:
        encoded = [(m.routing_key, *envelope.encode(m)) for m in messages]
        broker = self._broker
        with broker.lock:
            for queue, tag, payload, priority in encoded:
                entry = (envelope.clamp_priority(priority), next(broker.seq), tag, payload)
                heapq.heappush(broker.queues.setdefault(queue, []), entry)
        broker.wakeup.notify()

    def put_raw(self, queue: str, raw: str) -> None:
        """Queue an element as it is, valid or not (for tests of malformed input)."""
        broker = self._broker
        with broker.lock:
            heapq.heappush(broker.queues.setdefault(queue, []), (0, next(broker.seq), "", raw))
        broker.wakeup.notify()

    async def declare(self, queues: Iterable[str]) -> None:
        broker = self._broker
        with broker.lock:
            for queue in queues:
                broker.queues.setdefault(queue, [])

    # -- consuming -----------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        wakeup = self._broker.wakeup
        while True:
            ticket = wakeup.ticket()
            deliveries = self._take(queues, max_count)
            if deliveries:
                return deliveries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await wakeup.wait(remaining, since=ticket)

    def _take(self, queues: Sequence[str], max_count: int) -> list[Delivery]:
        broker = self._broker
        taken: list[tuple[str, _Entry]] = []
        now = time.monotonic()
        with broker.lock:
            heaps = [(q, h) for q in queues if (h := broker.queues.get(q))]
            while heaps and len(taken) < max_count:
                # lower priority number first, then the queue given first (as kombu's Redis
                # layout); min() keeps the first of equals
                queue, heap = min(heaps, key=lambda qh: qh[1][0][0])
                taken.append((queue, heapq.heappop(heap)))
                if not heap:
                    heaps = [(q, h) for q, h in heaps if h]
        deliveries: list[Delivery] = []
        good: list[tuple[str, str, _Entry]] = []
        bad: list[tuple[str, str, str]] = []
        for queue, entry in taken:
            try:
                delivery = envelope.decode(entry[2] or "", entry[3], queue)
                if not delivery.delivery_tag:
                    raise DecodeError("no delivery_tag")
            except DecodeError as exc:
                logger.warning("Malformed message in memory queue %r (%s) dead-lettered: %r",
                               queue, exc, entry[3][:120])
                bad.append((queue, entry[3], str(exc)))
                continue
            deliveries.append(delivery)
            good.append((delivery.delivery_tag, queue, entry))
        with broker.lock:
            for tag, queue, entry in good:
                broker.reserved[tag] = (queue, entry, now)
            broker.dead.extend(bad)
        return deliveries

    def _settle(self, deliveries: Iterable[Delivery]) -> list[tuple[str, _Entry]]:
        """Remove deliveries from the reservations (caller holds the lock); returns the
        entries that were still reserved (a second settle of one delivery is a no-op)."""
        out = []
        for d in deliveries:
            found = self._broker.reserved.pop(d.delivery_tag, None)
            if found is not None:
                out.append((found[0], found[1]))
        return out

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._broker.lock:
            self._settle(deliveries)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        self._return(deliveries, keep_place=True)

    async def reject(self, deliveries: Sequence[Delivery], requeue: bool = False) -> None:
        if requeue:
            self._return(deliveries, keep_place=False)
            return
        broker = self._broker
        with broker.lock:
            for queue, entry in self._settle(deliveries):
                broker.dead.append((queue, entry[3], "rejected"))

    def _return(self, deliveries: Sequence[Delivery], keep_place: bool) -> None:
        broker = self._broker
        with broker.lock:
            for queue, entry in self._settle(deliveries):
                self._push_back(queue, entry, keep_place)
        broker.wakeup.notify()

    def _push_back(self, queue: str, entry: _Entry, keep_place: bool) -> None:
        """Queue a reserved entry again, marked redelivered (caller holds the lock)."""
        broker = self._broker
        priority, seq, tag, payload = entry
        redelivered = envelope.mark_redelivered(json.loads(payload))
        new = (priority, seq if keep_place else next(broker.seq), tag, redelivered)
        heapq.heappush(broker.queues.setdefault(queue, []), new)

    async def defer(self, deliveries: Sequence[tuple[Delivery, float]]) -> None:
        """Take reserved deliveries out of the reservations until their time (epoch s)."""
        broker = self._broker
        due_at = {d.delivery_tag: due for d, due in deliveries}
        with broker.lock:
            for queue, entry in self._settle(d for d, _ in deliveries):
                heapq.heappush(broker.delayed, (due_at[entry[2]], next(broker.seq), queue, entry))

    async def promote_due(self, limit: int = 500) -> int:
        """Queue deferred messages whose time has come; returns how many."""
        broker = self._broker
        now, moved = time.time(), 0
        with broker.lock:
            while broker.delayed and broker.delayed[0][0] <= now and moved < limit:
                _, _, queue, entry = heapq.heappop(broker.delayed)
                heapq.heappush(broker.queues.setdefault(queue, []), entry)
                moved += 1
        if moved:
            broker.wakeup.notify()
        return moved

    async def restore_visible(self) -> int:
        broker = self._broker
        ceiling = time.monotonic() - self.visibility_timeout
        with broker.lock:
            expired = [tag for tag, (_, _, at) in broker.reserved.items() if at <= ceiling]
            for tag in expired:
                queue, entry, _ = broker.reserved.pop(tag)
                self._push_back(queue, entry, keep_place=True)
        if expired:
            broker.wakeup.notify()
            logger.info("Restored %d unacknowledged message(s) to their queues", len(expired))
        return len(expired)

    # -- management ----------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        with self._broker.lock:
            heap = self._broker.queues.get(queue) or []
            count = len(heap)
            heap.clear()
        return count

    async def queue_length(self, queue: str) -> int:
        with self._broker.lock:
            return len(self._broker.queues.get(queue) or ())

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """``(queue, raw element, reason)`` of every dead-lettered message so far."""
        with self._broker.lock:
            return list(self._broker.dead)

    # -- remote control (Mailbox) ---------------------------------------------------------

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        """Append ``payload`` to the buffer of every current subscription of ``exchange``
        (``routing_key`` is not kept apart: it is in the envelope's delivery_info)."""
        broker = self._broker
        with broker.lock:
            for subscription in broker.subscribers.get(exchange, ()):
                subscription.put(payload)
        broker.control.notify()

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> _Subscription:
        """Every payload of ``exchange`` from now on (publishes carry no routing key here,
        so ``routing_key`` narrows nothing)."""
        broker = self._broker
        subscription = _Subscription(broker, exchange)
        with broker.lock:
            broker.subscribers.setdefault(exchange, set()).add(subscription)
        return subscription

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        broker = self._broker
        with broker.lock:
            broker.bindings.setdefault(exchange, set()).add((routing_key, queue))
            broker.direct.setdefault(queue, deque())

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        broker = self._broker
        with broker.lock:
            bound = broker.bindings.get(exchange)
            if bound is not None:
                bound.discard((routing_key, queue))
                if not bound:
                    del broker.bindings[exchange]
            broker.direct.pop(queue, None)

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        broker = self._broker
        with broker.lock:
            queues = {q for key, q in broker.bindings.get(exchange, ()) if key == routing_key}
            for queue in queues:
                broker.direct.setdefault(queue, deque()).append(payload)
        if queues:
            broker.control.notify()
        return len(queues)

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        broker = self._broker

        async def take() -> list[str]:
            with broker.lock:
                waiting = broker.direct.get(queue)
                if not waiting:
                    return []
                taken = list(waiting)
                waiting.clear()
            return taken

        return list(await poll(broker.control, take, timeout, timeout, timeout))

    async def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _Subscription:
    """One subscriber of a fanout exchange (``MemoryTransport.fanout_subscribe``).

    ``get`` and ``close`` are called from the loop that made it; ``put`` is called by
    publishers on any thread, with the broker's lock held (it guards ``_buffer``).
    """

    def __init__(self, broker: _Broker, exchange: str) -> None:
        self._broker = broker
        self._exchange = exchange
        self._buffer: deque[str] = deque()
        self._dropped = 0
        self._closed = False

    def put(self, payload: str) -> None:
        if len(self._buffer) >= FANOUT_BUFFER:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(payload)

    async def get(self, timeout: float) -> list[str]:
        """Payloads received since the last call; ``[]`` at once once closed."""
        if self._closed:
            return []
        broker = self._broker

        async def take() -> list[str]:
            with broker.lock:
                taken, dropped = list(self._buffer), self._dropped
                self._buffer.clear()
                self._dropped = 0
            if dropped:
                logger.warning("Fanout subscriber of %r read too slowly: dropped its %d oldest "
                               "payload(s)", self._exchange, dropped)
            return taken

        return list(await poll(broker.control, take, timeout, timeout, timeout))

    async def close(self) -> None:
        broker = self._broker
        self._closed = True
        with broker.lock:
            subscribers = broker.subscribers.get(self._exchange)
            if subscribers is not None:
                subscribers.discard(self)
                if not subscribers:
                    del broker.subscribers[self._exchange]
            self._buffer.clear()

