"""``EventReceiver``: capture the events workers and clients publish, and hand each to a handler.

Events arrive on the fanout exchange ``celeryev`` (the ``event_exchange`` setting) through
the broker's ``Mailbox`` (transport/base.py). On Redis, upstream Celery publishes each one to
the channel ``/<db>.celeryev/<routing key>`` (``worker.heartbeat``, ``task.sent``, ...), and a
worker's task events go out in batches as ``task.multi``: one message whose body is a JSON
list of events. Each message is a kombu envelope; its body is decoded (JSON unless ``accept``
says otherwise), each event is stamped as upstream's receiver stamps it
(``event_from_message``), then given to ``handlers[type]`` or ``handlers["*"]``.

A message that cannot be decoded, or an event that is not a dict with a ``type``, is
dropped; the first of each kind is logged as a warning, the rest at debug level. Nothing a
publisher sends is raised into the capture loop; what a handler raises is.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from .. import _state
from ..exceptions import CeleryError, ContentDisallowed, DecodeError, EventCaptureTimeout
from ..messaging import serialization
from ..transport import envelope
from .event import adjust_timestamp

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["EventReceiver", "topic_matches"]

logger = logging.getLogger("celery.events.receiver")

Handler = Callable[[dict[str, Any]], Any]
#: Longest wait for one poll of the subscription: how soon ``should_stop`` is noticed.
POLL_INTERVAL = 1.0


@functools.lru_cache(maxsize=256)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on ``.``; ``*`` is one word, ``#`` zero or more."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


class _Budget:
    """When a capture is over: after ``limit`` messages, or ``timeout`` seconds without one."""

    def __init__(self, limit: int | None, timeout: float | None) -> None:
        self.left = limit
        self.timeout = timeout
        self.idle_since = time.monotonic()

    def wait(self) -> float:
        """Seconds the next poll may wait. Raises EventCaptureTimeout when idle too long."""
        if self.timeout is None:
            return POLL_INTERVAL
        left = self.timeout - (time.monotonic() - self.idle_since)
        if left <= 0:
            raise EventCaptureTimeout(f"no event within {self.timeout} s")
        return min(left, POLL_INTERVAL)

    def took_one(self) -> bool:
        """Count one message; True when the limit is reached."""
        self.idle_since = time.monotonic()
        if self.left is None:
            return False
        self.left -= 1
        return self.left <= 0


class EventReceiver:
    """Captures events and dispatches them to ``handlers`` (Celery's ``EventReceiver``).

    Args:
        channel: accepted for Celery's signature. One of our transports (anything with
            ``fanout_subscribe``) is used as the broker; anything else (``None``, a kombu
            ``Connection``, ``app.connection_for_read()``) is ignored and the app's broker
            (``app.transport``) is used.
        handlers: ``{event type: callable(event)}``; ``"*"`` catches the types not named.
        routing_key: a topic pattern the events' routing keys must match (``#``: all,
            ``worker.#``: worker events only).
        node_id: names this receiver (``<queue_prefix>.<node_id>``, as Celery names its
            queue); a fresh uuid by default. Informational: events use no queue here.
        app: the app whose broker, settings and Lamport clock are used; the current app
            by default.
        accept: content types or serializer names accepted for event bodies; by default
            ``event_serializer`` and JSON.
        queue_ttl, queue_expires: accepted for Celery's signature; not applied per
            receiver (a warning says so): on RabbitMQ the receiver's queue takes the
            ``event_queue_ttl``/``event_queue_expires`` settings; elsewhere a pub/sub
            subscription has no queue to expire.

    Thread-safety: a receiver captures in one thread (``capture``/``itercapture``) or on
    one event loop (``acapture``/``aitercapture``) at a time, and runs handlers there.
    ``should_stop`` may be set from any thread or a handler (a ``threading.Event``); the
    capture ends within ``POLL_INTERVAL``.
    """

    def __init__(self, channel: Any = None, handlers: Mapping[str, Handler] | None = None,
                 routing_key: str = "#", node_id: str | None = None, app: Celery | None = None,
                 queue_prefix: str | None = None, accept: Any = None,
                 queue_ttl: float | None = None, queue_expires: float | None = None) -> None:
        self.app = app if app is not None else _state.get_current_app()
        conf = self.app.conf
        self.channel = channel
        #: Kept as given (not copied), as in Celery: handlers added to it later are used.
        self.handlers: Mapping[str, Handler] = {} if handlers is None else handlers
        self.routing_key = routing_key
        self.node_id = node_id or str(uuid.uuid4())
        self.queue_prefix = queue_prefix or conf.get("event_queue_prefix") or "celeryev"
        self.queue_name = f"{self.queue_prefix}.{self.node_id}"
        self.exchange = conf.get("event_exchange") or "celeryev"
        if accept is None:
            accept = {conf.get("event_serializer") or "json", "json"}
        self.accept = serialization.accept_set(accept)
        self.clock = self.app.clock
        self.adjust_clock = self.clock.adjust
        self.forward_clock = self.clock.forward
        self._stop = threading.Event()
        self._warned: set[str] = set()  # kinds of malformed input logged as warnings already
        if queue_ttl is not None or queue_expires is not None:
            logger.warning("EventReceiver: queue_ttl/queue_expires are not applied per "
                           "receiver; set event_queue_ttl/event_queue_expires instead")

    @property
    def should_stop(self) -> bool:
        """Set it (any thread) to end the capture."""
        return self._stop.is_set()

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self._stop.set()
        else:
            self._stop.clear()

    # -- dispatch --------------------------------------------------------------------------

    def process(self, type: str, event: dict[str, Any]) -> None:  # noqa: A002 - Celery's name
        """Call the handler of ``type`` (or the ``"*"`` handler) with ``event``."""
        handler = self.handlers.get(type) or self.handlers.get("*")
        if handler is not None:
            handler(event)

    def event_from_message(self, body: dict[str, Any], localize: bool = True,
                           now: Callable[[], float] = time.time) -> tuple[str, dict[str, Any]]:
        """``(type, event)``: ``body`` stamped as Celery's receiver stamps it, in place.

        The app's Lamport clock moves past the event's ``clock`` (an event without one gets
        the next tick); a ``task-sent`` event's clock is replaced by one just below ours, as
        clients keep no clock in step. With ``localize``, ``timestamp`` moves from the
        sender's ``utcoffset`` to ours. ``local_received`` is set to ``now()``.
        """
        type_ = body["type"]
        clock = body.get("clock")
        if type_ == "task-sent":
            body["clock"] = (self.clock.value or 1) - 1
            self.adjust_clock(body["clock"])
        elif isinstance(clock, int) and not isinstance(clock, bool):
            self.adjust_clock(clock)
        else:
            body["clock"] = self.forward_clock()
        if localize:
            offset, timestamp = body.get("utcoffset"), body.get("timestamp")
            if _is_number(offset) and _is_number(timestamp):
                body["timestamp"] = adjust_timestamp(timestamp, offset)
        body["local_received"] = now()
        return type_, body

    def _drop(self, kind: str, detail: str) -> None:
        level = logging.DEBUG if kind in self._warned else logging.WARNING
        self._warned.add(kind)
        logger.log(level, "Dropping an event message (%s): %s%s", kind, detail,
                   "" if level == logging.DEBUG else " (later ones of this kind: debug level)")

    def decode(self, payload: str) -> list[dict[str, Any]]:
        """The events in one broker payload (a kombu envelope): ``[]`` when it is malformed
        (logged), or its routing key does not match ``routing_key``."""
        try:
            message = envelope.decode("", payload, "").message
        except DecodeError as exc:
            self._drop("envelope", str(exc))
            return []
        if self.routing_key != "#" and message.routing_key and \
                not topic_matches(self.routing_key, message.routing_key):
            return []
        try:
            body = serialization.loads(message.body, message.content_type,
                                       message.content_encoding, self.accept)
        except (ContentDisallowed, DecodeError) as exc:
            self._drop("body", str(exc))
            return []
        events = []
        for item in body if isinstance(body, list) else [body]:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                events.append(item)
            else:
                self._drop("event", f"not an event dict with a 'type': {str(item)[:120]!r}")
        return events

    def receive(self, payload: str) -> list[dict[str, Any]]:
        """Decode one payload, stamp its events and dispatch them; the events."""
        events = self.decode(payload)
        for body in events:
            self.process(*self.event_from_message(body))
        return events

    # -- capturing -------------------------------------------------------------------------

    def _transport(self) -> Any:
        if callable(getattr(self.channel, "fanout_subscribe", None)):
            return self.channel
        transport = self.app.transport
        if not callable(getattr(transport, "fanout_subscribe", None)):
            scheme = self.app.broker_url.split(":", 1)[0]
            raise CeleryError(f"events cannot be received from the broker {scheme}:// "
                              "(it has no fanout exchange)")
        return transport

    async def _subscribe(self, wakeup: bool) -> Any:
        subscription = await self._transport().fanout_subscribe(self.exchange, self.routing_key)
        if wakeup:
            await self.wakeup_workers()
        return subscription

    async def wakeup_workers(self) -> None:
        """Ask every worker for a heartbeat now (the ``heartbeat`` control command, no
        reply), so they show up without waiting for their next one. Failures are logged."""
        try:
            await self.app.control.abroadcast("heartbeat")
        except CeleryError as exc:
            logger.warning("Could not ask the workers for a heartbeat: %s", exc)

    def itercapture(self, limit: int | None = None, timeout: float | None = None,
                    wakeup: bool = True) -> Iterator[list[dict[str, Any]]]:
        """Capture in this thread; yields after each message (the events it held).

        Ends after ``limit`` messages (a ``task.multi`` batch counts once, as upstream
        counts it), or when ``should_stop`` is set. Raises EventCaptureTimeout after
        ``timeout`` seconds without a message, and ConnectionLost when the broker is gone.
        The subscription lives on the app's portal loop.
        """
        portal = self.app.portal
        subscription = portal.call(self._subscribe(wakeup))
        budget = _Budget(limit, timeout)
        try:
            while not self.should_stop:
                for payload in portal.call(subscription.get(budget.wait())):
                    yield self.receive(payload)
                    if budget.took_one() or self.should_stop:
                        return
        finally:
            portal.call(subscription.close())

    def capture(self, limit: int | None = None, timeout: float | None = None,
                wakeup: bool = True) -> None:
        """Capture in this thread until done (see ``itercapture``)."""
        for _ in self.itercapture(limit=limit, timeout=timeout, wakeup=wakeup):
            pass

    async def aitercapture(self, limit: int | None = None, timeout: float | None = None,
                           wakeup: bool = True) -> AsyncIterator[list[dict[str, Any]]]:
        """``itercapture`` on the running event loop; handlers run on it too."""
        subscription = await self._subscribe(wakeup)
        budget = _Budget(limit, timeout)
        try:
            while not self.should_stop:
                for payload in await subscription.get(budget.wait()):
                    yield self.receive(payload)
                    if budget.took_one() or self.should_stop:
                        return
        finally:
            await subscription.close()

    async def acapture(self, limit: int | None = None, timeout: float | None = None,
                       wakeup: bool = True) -> None:
        """``capture`` on the running event loop."""
        async for _ in self.aitercapture(limit=limit, timeout=timeout, wakeup=wakeup):
            pass


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
