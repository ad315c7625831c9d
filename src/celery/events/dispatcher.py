"""``EventDispatcher``: send events as Celery's workers and clients send them.

On the wire an event is a JSON object (``events/event.py``: ``type``, ``timestamp``,
``hostname``, ``utcoffset``, ``pid``, ``clock`` and its own fields) in a kombu envelope:
transient (``delivery_mode`` 1), header ``{"hostname": sender}``, published on the fanout
exchange ``event_exchange`` (``celeryev``) with the routing key of its type
(``task-succeeded`` -> ``task.succeeded``); on Redis, kombu's channel
``/{db}.celeryev/task.succeeded``. Events of a ``buffer_group`` (a worker's task events) are
sent together as one message whose body is the JSON list of them and whose routing key is
``<group>.multi`` (``task.multi``), as Celery's worker sends them.

Two ways to run, chosen by ``loop``:

* **On a loop** (the worker: ``loop`` is its running event loop). ``send`` must be called on
  that loop; it never waits. Events gather in a buffer that is flushed ``flush_delay``
  seconds after its first event (``FLUSH_DELAY``, 20 ms), or at once when it holds
  ``MULTI_MAX`` events, so a busy worker's events go a few hundred per publish: a publish
  per task would cost more than the events themselves (a worker's loop turn often ends a
  single task). One publishing task drains the messages in order. Fire-and-forget: a broker that cannot take
  them, or a backlog beyond ``max_pending`` events, drops events (oldest first), counted in
  ``dropped`` and logged once per outage; the worker never waits for a monitor.
* **Without a loop** (clients: ``app.events.Dispatcher()``, ``task_send_sent_event``).
  ``send`` publishes at once through the app's portal loop and returns when the broker has
  it, as Celery's does; a failure is logged and counted, never raised into the sender.

Thread-safety: on a loop, every method but ``close`` is for that loop's thread. Without a
loop, ``send`` may be called from any thread (the portal serialises the publishes).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..messaging.protocol import Message
from ..transport import envelope as envelope_codec
from .event import Event, group_from, routing_key_of, utcoffset

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["EventDispatcher"]

logger = logging.getLogger("celery.events")

#: Events waiting to be published, at most (on a loop); beyond it the oldest are dropped.
MAX_PENDING = 10_000
#: Events in one ``<group>.multi`` message, at most.
MULTI_MAX = 500
#: Seconds events wait in the buffer for others to go with them (on a loop).
FLUSH_DELAY = 0.02
#: Events' JSON, compact (receivers parse any spacing); stateless, so shared by threads.
_JSON = json.JSONEncoder(separators=(",", ":"))
#: Seconds ``close`` waits for what is still buffered (worker-offline included).
CLOSE_TIMEOUT = 2.0


class EventDispatcher:
    """Celery's ``EventDispatcher``: ``send(type, **fields)``, ``enabled``, ``groups``,
    ``enable()``/``disable()``, ``flush()``, ``close()``, usable as a context manager."""

    def __init__(self, connection: Any = None, hostname: str | None = None,
                 enabled: bool = True, channel: Any = None,
                 buffer_while_offline: bool | None = None,
                 app: Celery | None = None, serializer: str | None = None,
                 groups: Iterable[str] | None = None, delivery_mode: int = 1,
                 buffer_group: Iterable[str] | None = None, buffer_limit: int | None = None,
                 on_send_buffered: Callable[[], Any] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, transport: Any = None,
                 max_pending: int = MAX_PENDING, flush_delay: float = FLUSH_DELAY) -> None:
        if app is None:
            from .._state import get_current_app

            app = get_current_app()
        self.app = app
        # ``connection``/``channel``: a kombu object in Celery; ours ignores it (the app's
        # broker is used), as app.connection() is only a handle (app/connection.py).
        self.transport = transport
        self.hostname = hostname or _default_hostname()
        self.exchange = app.conf.event_exchange
        serializer = serializer or app.conf.event_serializer
        if serializer != "json":
            raise ValueError(f"event_serializer {serializer!r} is not supported: events are "
                             "sent as JSON, which every monitor reads")
        self.delivery_mode = delivery_mode
        self.groups = set(groups or [])
        self.buffer_group = set(buffer_group or [])
        self.pid = os.getpid()
        self.clock = app.clock
        self.loop = loop
        self.max_pending = max_pending
        self.flush_delay = flush_delay
        self.on_enabled: set[Callable[[], Any]] = set()
        self.on_disabled: set[Callable[[], Any]] = set()
        #: Events dropped: the broker could not take them, or too many waited.
        self.dropped = 0
        #: Events published.
        self.sent = 0
        self._buffer: list[dict[str, Any]] = []  # events of this loop turn, in order
        self._flush_due = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self._outgoing: deque[tuple[str, str, int]] = deque()  # (routing key, payload, events)
        self._pending = 0  # events in _outgoing
        self._publisher: asyncio.Task[None] | None = None
        self._failing = False
        self.enabled = enabled
        if not enabled:
            self.disable()
        if buffer_while_offline:
            _not_implemented("buffer_while_offline=True", "events the broker does not take "
                             "are dropped and counted, never kept for later")
        if buffer_limit is not None or on_send_buffered is not None:
            _not_implemented("buffer_limit/on_send_buffered", "on a loop, events are flushed "
                             f"{FLUSH_DELAY * 1000:.0f} ms after the first, or at {MULTI_MAX}")

    # -- Celery's API --------------------------------------------------------------------

    def enable(self) -> None:
        self.enabled = True
        for callback in self.on_enabled:
            callback()

    def disable(self) -> None:
        self.enabled = False
        for callback in self.on_disabled:
            callback()

    def send(self, type: str, blind: bool = False,  # noqa: A002 - Celery's name
             utcoffset: Callable[[], float] = utcoffset, retry: bool = False,
             retry_policy: Any = None, Event: Callable[..., dict[str, Any]] = Event,  # noqa: N803
             **fields: Any) -> None:
        """Send the event ``type`` with ``fields`` (stamped with hostname, utcoffset, pid and
        the app's clock; ``blind``: no clock), if enabled and its group is one of
        ``groups`` (all groups when ``groups`` is empty)."""
        if retry or retry_policy is not None:
            _not_implemented("send(retry=..., retry_policy=...)",
                             "an event is published once; a failure drops it (counted)")
        event = self._event(type, blind, utcoffset, Event, fields)
        if event is None:
            return
        if self.loop is None:
            self._send_now(event)
            return
        buffer = self._buffer
        buffer.append(event)
        if len(buffer) >= MULTI_MAX:
            self.flush()
        elif not self._flush_due:
            self._flush_due = True
            self._flush_timer = self.loop.call_later(self.flush_delay, self._flush_later)

    async def asend(self, type: str, blind: bool = False,  # noqa: A002 - Celery's name
                    utcoffset: Callable[[], float] = utcoffset,
                    Event: Callable[..., dict[str, Any]] = Event,  # noqa: N803
                    **fields: Any) -> None:
        """``send`` for a coroutine: published before it returns (a dispatcher without a
        loop; any event loop)."""
        event = self._event(type, blind, utcoffset, Event, fields)
        if event is not None:
            await self._apublish(event)

    def _event(self, type: str, blind: bool, utcoffset: Callable[[], float],  # noqa: A002
               Event: Callable[..., dict[str, Any]],  # noqa: N803
               fields: dict[str, Any]) -> dict[str, Any] | None:
        """The event to send, stamped; None when it is not to be sent. On every task
        event's path with ``-E``: one dict built, the group and the UTC offset looked up."""
        if not self.enabled or (self.groups and _group_of(type) not in self.groups):
            return None
        offset = _utcoffset_now() if utcoffset is _default_utcoffset else utcoffset()
        clock = None if blind else self.clock.forward()
        if Event is not _default_event:
            return Event(type, {"hostname": self.hostname, "utcoffset": offset, "pid": self.pid,
                                "clock": clock, **fields})
        event = {"hostname": self.hostname, "utcoffset": offset, "pid": self.pid,
                 "clock": clock, **fields}  # a field given wins over the stamp
        if "timestamp" not in event:
            event["timestamp"] = time.time()
        event["type"] = type
        return event

    def publish(self, type: str, fields: dict[str, Any], producer: Any = None,  # noqa: A002
                blind: bool = False, Event: Callable[..., dict[str, Any]] = Event,  # noqa: N803
                **kwargs: Any) -> None:
        """Celery's lower-level publish: ``fields`` as they are (no hostname or pid added)."""
        event = Event(type, fields)
        if not blind and "clock" not in event:
            event["clock"] = self.clock.forward()
        if self.loop is None:
            self._send_now(event)
        else:
            self._buffer.append(event)
            self.flush()

    def _flush_later(self) -> None:
        self._flush_timer = None
        self.flush()

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        """Hand what is buffered to the publisher (on a loop; nothing to do without one)."""
        self._flush_due = False
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._buffer:
            return
        events, self._buffer = self._buffer, []
        for routing_key, body, count in _messages(events, self.buffer_group):
            self._outgoing.append((routing_key, self._payload(routing_key, body), count))
            self._pending += count
        while self._pending > self.max_pending and self._outgoing:
            _, _, count = self._outgoing.popleft()
            self._pending -= count
            self._drop(count, f"more than {self.max_pending} events waited to be published")
        if self._publisher is None or self._publisher.done():
            self._publisher = self.loop.create_task(self._drain(), name="event-publisher") \
                if self.loop is not None else None

    def extend_buffer(self, other: EventDispatcher) -> None:
        self._buffer.extend(other._buffer)
        other._buffer = []

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Flush and wait (up to ``timeout``) until what is buffered is published. On the
        dispatcher's loop."""
        self.flush()
        publisher = self._publisher
        if publisher is not None and not publisher.done():
            done, _ = await asyncio.wait({publisher}, timeout=timeout)
            if not done:
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
                if self._pending:
                    self._drop(self._pending, f"still unpublished after {timeout:.0f}s at close")
                self._outgoing.clear()
                self._pending = 0

    def close(self) -> None:
        """Stop sending (Celery's ``close``); a worker calls ``aclose`` to flush first."""
        self.disable()

    def __enter__(self) -> EventDispatcher:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    def _payload(self, routing_key: str, body: Any) -> str:
        message = Message(
            body=_JSON.encode(body).encode(), content_type="application/json",
            content_encoding="utf-8", headers={"hostname": self.hostname},
            properties={"delivery_mode": self.delivery_mode}, exchange=self.exchange,
            routing_key=routing_key)
        return envelope_codec.encode(message)[1]

    def _transport(self) -> Any:
        return self.transport if self.transport is not None else self.app.transport

    async def _drain(self) -> None:
        """Publish the queued messages in order (one at a time); the dispatcher's loop."""
        transport = self._transport()
        while self._outgoing:
            # Taken off the queue first: what the queue holds is never in flight, so the
            # trimming in ``flush`` drops only events not yet tried.
            routing_key, payload, count = self._outgoing.popleft()
            self._pending -= count
            try:
                await transport.fanout_publish(self.exchange, payload, routing_key)
            except asyncio.CancelledError:
                self._drop(count, "still unpublished at close")
                raise
            except Exception as exc:  # a broker away or refusing: drop, never block the worker
                self._drop(count, f"the broker did not take them: {exc}")
                continue
            self.sent += count
            if self._failing:
                self._failing = False
                logger.info("Events: publishing again (%d dropped so far)", self.dropped)

    def _send_now(self, event: dict[str, Any]) -> None:
        self.app.portal.call(self._apublish(event))

    async def _apublish(self, event: dict[str, Any]) -> None:
        routing_key = routing_key_of(event["type"])
        payload = self._payload(routing_key, event)
        try:
            await self._transport().fanout_publish(self.exchange, payload, routing_key)
        except Exception as exc:  # as on a loop: a monitor's event never fails the sender
            self._drop(1, f"the broker did not take it: {exc}")
            return
        self.sent += 1
        self._failing = False

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if not self._failing:
            self._failing = True
            logger.warning("Events: dropped %d event(s): %s (dropping silently until "
                           "publishing works again)", count, " ".join(why.split()))


#: Celery arguments accepted but not implemented here, warned of once each (any thread:
#: a set's add of a str is one operation under its own lock in free-threaded builds too,
#: and at worst a second warning is logged).
_WARNED: set[str] = set()


def _not_implemented(what: str, instead: str) -> None:
    if what not in _WARNED:
        _WARNED.add(what)
        logger.warning("EventDispatcher: %s is accepted but not implemented: %s", what, instead)


_default_utcoffset = utcoffset
_default_event = Event
#: (monotonic second, offset): the UTC offset, looked up at most once a second.
_offset_cache: tuple[int, float] = (-1, 0.0)


def _utcoffset_now() -> float:
    """``utcoffset()``, cached for the current second (a tuple swapped whole: any thread)."""
    global _offset_cache
    second = int(time.monotonic())
    cached = _offset_cache
    if cached[0] != second:
        cached = _offset_cache = (second, utcoffset())
    return cached[1]


@functools.lru_cache(maxsize=256)
def _group_of(type: str) -> str:  # noqa: A002
    return group_from(type)


def _messages(events: list[dict[str, Any]],
              buffer_group: set[str]) -> Iterable[tuple[str, Any, int]]:
    """``(routing key, body, events in it)`` per message for ``events`` in order: runs of
    events of a ``buffer_group`` as ``<group>.multi`` lists (at most MULTI_MAX each), others
    alone."""
    run: list[dict[str, Any]] = []
    run_group = ""
    for event in events:
        group = _group_of(event["type"])
        if group in buffer_group:
            if run and (group != run_group or len(run) >= MULTI_MAX):
                yield f"{run_group}.multi", run, len(run)
                run = []
            run_group = group
            run.append(event)
            continue
        if run:
            yield f"{run_group}.multi", run, len(run)
            run = []
        yield routing_key_of(event["type"]), event, 1
    if run:
        yield f"{run_group}.multi", run, len(run)


def _default_hostname() -> str:
    import socket

    return f"gen{os.getpid()}@{socket.gethostname()}"  # Celery's name for a client
