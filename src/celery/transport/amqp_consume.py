"""Consuming from RabbitMQ: one ``basic_consume`` per queue, a prefetch buffer, batched acks.

One ``Consuming`` per event loop that fetches (the worker's main loop), on the connection's
``consume`` channel. Each consumed queue has a consumer whose deliveries land in that queue's
buffer (a deque, on this loop); ``fetch`` takes from the buffers in the caller's order of
preference. The server sends no more unacked messages than the channel's prefetch count
(``basic_qos``), which is the consumer's window plus the ETA messages it holds in memory
(``prefetch``), as Celery raises its QoS for them.

Settling: acks, requeues and rejects go on the channel the message came on. A batch whose
delivery tags are exactly the oldest outstanding ones on that channel (nothing older still
buffered or held) goes as one frame with ``multiple=True``; the rest one frame each. A
delivery from a channel that has since closed (the connection broke) is not settled: the
server already put it back in its queue and delivers it again (at-least-once).

Consumer cancellation (the queue was deleted): the next ``fetch`` logs one line, declares the
queue again and consumes from it again.

Stopping (``stop``): cancels the consumers and requeues what is buffered and was never handed
out, at once, instead of when the channel closes.

Thread-safety: everything here runs on its one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ConnectionLost
from ..messaging.protocol import uuid4_str
from .amqp_connection import Connections, driver_errors
from .amqp_wire import delivery_of

if TYPE_CHECKING:
    from aio_pika.abc import AbstractQueue, AbstractRobustChannel
    from aiormq.abc import DeliveredMessage

    from .base import Delivery

__all__ = ["Consuming", "settle"]

logger = logging.getLogger(__name__)

#: Declares a queue on a channel (with its exchange and bindings) and returns it.
Declare = Callable[["AbstractRobustChannel", str], Awaitable["AbstractQueue"]]

ACK, REQUEUE, DROP = "ack", "requeue", "drop"
#: Loop turns without a new delivery after which ``fetch`` stops gathering a burst (each
#: turn delays a lone message a little: kept small).
GATHER_IDLE_TURNS = 4


class Consuming:
    """The consumers, buffers and QoS of one event loop. Used only on that loop."""

    def __init__(self, connections: Connections, declare: Declare, global_qos: bool,
                 consumer_arguments: Callable[[str], Mapping[str, Any]] | None = None) -> None:
        self._connections = connections
        self._declare = declare
        self._global_qos = global_qos
        #: queue name -> its ``basic.consume`` arguments (kombu's ``consumer_arguments``)
        self._consumer_arguments = consumer_arguments
        self.channel: AbstractRobustChannel | None = None
        #: The aiormq channel under ``channel`` that our consumers live on: a new one
        #: (after a reconnect) has none of them, and they are made again.
        self._underlay: Any = None
        #: queue name -> consumer tag (on ``_underlay``)
        self._consumers: dict[str, str] = {}
        self._buffers: dict[str, deque[DeliveredMessage]] = {}
        self._ready = asyncio.Event()
        #: Outstanding (delivered, unsettled) delivery tags per underlying channel, in
        #: delivery order (a dict as an ordered set).
        self.outstanding: dict[Any, dict[int, None]] = {}
        #: A unique prefix for the delivery tags of each underlying channel.
        self._prefixes: dict[Any, str] = {}
        self._prefetch = 0  # applied
        self.wanted = 0  # asked for with ``prefetch``
        self.stopped = False

    def prefetch(self, count: int) -> None:
        """The prefetch count to apply (on the next fetch)."""
        self.wanted = max(int(count), 0)

    async def _channel(self) -> AbstractRobustChannel:
        channel = await self._connections.channel("consume", confirms=False)
        if channel is not self.channel:  # a new one: consumers and QoS start over
            self.channel, self._prefetch = channel, 0
            self._consumers.clear()
        return channel

    async def _apply_qos(self, channel: AbstractRobustChannel, max_count: int) -> None:
        wanted = self.wanted
        if not wanted:  # no window given (not a worker): what is handed out, plus max_count
            unsettled = sum(len(tags) for tags in self.outstanding.values())
            wanted = unsettled - sum(len(b) for b in self._buffers.values()) + max_count
        if wanted != self._prefetch:
            await channel.set_qos(prefetch_count=wanted, global_=self._global_qos)
            self._prefetch = wanted

    async def _consume(self, channel: AbstractRobustChannel, queues: Sequence[str]) -> None:
        """Consume from each of ``queues`` (and from no other), with aiormq's own consumers:
        no aio-pika message object and no extra task per delivery. aio-pika's robust channel
        declares the queues again after a reconnect; the consumers are made again here."""
        # (bounded: a robust channel waits for the reconnection here)
        underlay: Any = await asyncio.wait_for(channel.get_underlay_channel(), 5.0)
        if underlay is not self._underlay:
            self._underlay = underlay
            self._consumers.clear()  # they died with the old channel
        for name in queues:
            if name in self._consumers:
                continue
            queue = await self._declare(channel, name)  # (its name may differ: broadcast)
            buffer = self._buffers.setdefault(name, deque())
            arguments = self._consumer_arguments(name) if self._consumer_arguments else None
            ok = await underlay.basic_consume(queue.name, self._on_message(buffer), no_ack=False,
                                              arguments=dict(arguments) if arguments else None)
            self._consumers[name] = ok.consumer_tag
        for name in [n for n in self._consumers if n not in queues]:
            await self._cancel(name)

    def _on_message(self, buffer: deque[DeliveredMessage]) -> Callable[[Any], None]:
        ready, outstanding = self._ready, self.outstanding

        def on_message(message: DeliveredMessage) -> None:  # aiormq runs it in a task
            buffer.append(message)
            deliver: Any = message.delivery  # a Basic.Deliver here
            outstanding.setdefault(message.channel, {})[deliver.delivery_tag or 0] = None
            ready.set()

        return on_message

    async def _cancel(self, name: str) -> None:
        tag = self._consumers.pop(name)
        try:
            await self._underlay.basic_cancel(tag)
        except driver_errors():
            pass  # the channel is gone: so is the consumer
        await self._return_buffered([name])

    async def _check_cancelled(self, channel: AbstractRobustChannel) -> None:
        """Consumers the server cancelled (their queue was deleted): declare the queue
        again and consume anew (in ``_consume``)."""
        live = self._underlay.consumers if self._underlay is not None else {}
        gone = [name for name, tag in self._consumers.items() if tag not in live]
        for name in gone:
            logger.warning("AMQP: the server cancelled the consumer of queue %r (deleted?); "
                           "declaring it again and consuming anew", name)
            del self._consumers[name]
        if gone:
            await self._consume(channel, list(self._consumers) + gone)

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        try:
            channel = await self._channel()
            await self._apply_qos(channel, max_count)
            await self._consume(channel, queues)
            taken = self._take(queues, max_count)
            if not taken and timeout > 0:  # idle: is every consumer still there?
                await self._check_cancelled(channel)
                taken = self._take(queues, max_count)  # (what came meanwhile)
        except driver_errors() as exc:
            raise ConnectionLost(f"AMQP consume on {self._connections.params.safe_url} "
                                 f"failed: {exc!r}") from exc
        for gone in [ch for ch in self.outstanding if ch.is_closed]:
            del self.outstanding[gone]
        for gone in [ch for ch in self._prefixes if ch.is_closed]:
            del self._prefixes[gone]
        if not taken and timeout > 0:
            self._ready.clear()  # (no await since the last _take: nothing came unseen)
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
            await self._gather(max_count)
            taken = self._take(queues, max_count)
        return taken

    async def _gather(self, max_count: int) -> None:
        """After the first message came: let the deliveries already read from the socket
        reach the buffers (each takes a few loop turns in aio-pika), so that a burst is
        fetched as one batch. Stops after GATHER_IDLE_TURNS turns that brought nothing."""
        idle = 0
        buffered = sum(len(b) for b in self._buffers.values())
        while idle < GATHER_IDLE_TURNS and buffered < max_count:
            await asyncio.sleep(0)
            now = sum(len(b) for b in self._buffers.values())
            idle = 0 if now > buffered else idle + 1
            buffered = now

    def _take(self, queues: Sequence[str], max_count: int) -> list[Delivery]:
        taken: list[Delivery] = []
        for name in queues:
            buffer = self._buffers.get(name)
            while buffer and len(taken) < max_count:
                message = buffer.popleft()
                if _stale(message):
                    continue  # the server requeued it when its channel closed
                channel = message.channel
                prefix = self._prefixes.get(channel)
                if prefix is None:
                    prefix = self._prefixes[channel] = f"{uuid4_str()[:13]}."
                taken.append(delivery_of(message, name, prefix))
            if len(taken) >= max_count:
                break
        return taken

    async def _return_buffered(self, names: Sequence[str]) -> int:
        messages: list[Any] = []
        for name in names:
            buffer = self._buffers.pop(name, None)
            if buffer:
                messages.extend(m for m in buffer if not _stale(m))
        await settle(self.outstanding, messages, REQUEUE)
        return len(messages)

    async def stop(self) -> int:
        """Cancel the consumers and requeue what was buffered and never handed out."""
        self.stopped = True
        for name in list(self._consumers):
            tag = self._consumers.pop(name)
            try:
                await self._underlay.basic_cancel(tag)
            except driver_errors():
                pass
        # Deliveries the server sent before its cancel-ok are still on their way through
        # aiormq's tasks: let them reach the buffers first.
        for _ in range(5):
            await asyncio.sleep(0)
        return await self._return_buffered(list(self._buffers))


async def settle(outstanding: dict[Any, dict[int, None]], messages: Sequence[Any], how: str) -> None:
    """Ack (``ACK``), requeue (``REQUEUE``) or dead-letter/drop (``DROP``) aio-pika messages,
    with ``multiple=True`` for each channel's batch of oldest outstanding tags."""
    by_channel: dict[Any, list[int]] = {}
    for message in messages:
        if message.channel.is_closed:
            continue  # the server requeued it already
        by_channel.setdefault(message.channel, []).append(message.delivery.delivery_tag)
    for channel, tags in by_channel.items():
        pending = outstanding.get(channel, {})
        tags = sorted(t for t in set(tags) if t in pending)  # settled already: never again
        if not tags:
            continue
        wanted = set(tags)
        prefix = 0  # how many of ``tags`` are the channel's oldest outstanding ones
        for tag in pending:
            if tag not in wanted:
                break
            prefix += 1
        for tag in tags:
            pending.pop(tag, None)
        if not pending:
            outstanding.pop(channel, None)
        try:
            if prefix > 1:
                await _send(channel, tags[prefix - 1], how, multiple=True)
            for tag in tags[prefix if prefix > 1 else 0:]:
                await _send(channel, tag, how, multiple=False)
        except driver_errors():
            continue  # the channel broke meanwhile: the server requeues the rest


def _stale(message: Any) -> bool:
    """True if the channel ``message`` came on has closed (the server requeued it)."""
    return bool(message.channel.is_closed)


async def _send(channel: Any, tag: int, how: str, *, multiple: bool) -> None:
    if how == ACK:
        await channel.basic_ack(tag, multiple=multiple)
    else:
        await channel.basic_nack(tag, multiple=multiple, requeue=how == REQUEUE)
