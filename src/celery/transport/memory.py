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

Thread-safety: one ``threading.Lock`` per broker (``_Broker.lock``) guards its queues,
reservations and dead letters; it is held only for in-memory list/heap operations, never
while decoding or awaiting. Waiting consumers on any event loop are woken through
``embedded.Wakeup``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ImproperlyConfigured
from ..messaging.protocol import Message
from . import envelope
from .base import CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT, Delivery
from .embedded import Shared, Wakeup, url_name

__all__ = ["MemoryTransport"]

logger = logging.getLogger(__name__)

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


#: URL name -> broker, for the whole process.
_brokers: Shared[str, _Broker] = Shared(_Broker)


class MemoryTransport:
    """The in-process broker of one ``memory://`` URL. See the module docstring."""

    capabilities = frozenset({CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT})

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
                entry = (_priority(priority), next(broker.seq), tag, payload)
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
                    raise ValueError("no delivery_tag")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.warning("Malformed message in memory queue %r (%s: %s) dead-lettered: %r",
                               queue, type(exc).__name__, exc, entry[3][:120])
                bad.append((queue, entry[3], f"{type(exc).__name__}: {exc}"))
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

    async def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _priority(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
