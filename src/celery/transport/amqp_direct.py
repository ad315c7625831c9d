"""Sync publishing without confirms, from the calling thread (``AMQPTransport.publish``).

With ``confirm_publish`` false (as upstream Celery publishes by default), a sync
``publish`` has nothing to wait for once its frames are in the socket. Running it on the
portal loop (``AMQPTransport.apublish``) then costs more than the publish itself: the hand
over to the portal thread and the wake-up of the caller. ``DirectPublisher`` writes the
frames (``Basic.Publish``, the content header, the body) itself, on a blocking socket of its
own: one AMQP connection per process, with one channel, shared by every thread.

What a returned ``publish`` guarantees, as on the portal path without confirms: its frames
are in the kernel's socket buffer, on a connection RabbitMQ had not closed at the last look.
A connection broken after that loses what was written to it; that is what
``confirm_publish=False`` gives up (kombu's producers without confirms too).

What it handles:

* **Only what needs no declaration.** The transport sends a message here only when the
  portal path already declared its queue since this connection was made (``ready``): the
  first publish to each queue, and the first after every reconnection, go through the portal,
  which declares the queue, its exchange and binding as Celery does (``mark_ready`` after).
  Messages parked for a delay (quorum queues) always go through the portal.
* **What RabbitMQ sends back.** Nothing is read on the way of a publish, except a
  non-blocking look at the socket when the last publish is older than ``IDLE_LOOK`` seconds or
  ``LOOK_EVERY`` publishes have gone without one: a message returned as unroutable (we publish
  ``mandatory``, as the portal path) is logged as a warning with its task id, a channel the
  server closed is logged and opened again, a connection it closed (or the end of the stream)
  is dropped and made again before this publish is written.
* **Heartbeats.** A blocking client cannot answer heartbeats while idle, so a connection not
  written to for half the negotiated heartbeat is closed and made again before the next
  publish, instead of being found dead by the server.
* **Failures.** A connection that cannot be made, or a write that fails, is retried as
  ``task_publish_retry_policy`` says (the transport passes ``retries`` and ``delays``), then
  raises ``ConnectionLost`` (an ``OperationalError``), as the portal path does. A write
  blocked longer than ``WRITE_TIMEOUT`` seconds (a broker that stopped reading: a memory or
  disk alarm) fails the same way.
* **fork.** A child process makes its own connection; it never writes to its parent's.

Thread-safety: ``_lock`` guards the socket and every attribute but ``_ready``'s set, which
``_ready_lock`` guards (``ready`` and ``mark_ready`` come from any thread); a publish holds
``_lock`` for its write and any look at the socket (microseconds, or a connect).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pamqp.frame
from pamqp import commands
from pamqp.exceptions import UnmarshalingException
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from ..exceptions import ConnectionLost

if TYPE_CHECKING:
    from .amqp_codec import Properties
    from .amqp_connection import AMQPParams

__all__ = ["IDLE_LOOK", "LOOK_EVERY", "WRITE_TIMEOUT", "DirectPublisher"]

logger = logging.getLogger(__name__)

#: Look at what the server sent when the last publish is older than this (seconds) ...
IDLE_LOOK = 0.001
#: ... or after this many publishes without a look.
LOOK_EVERY = 64
#: Seconds a write may block (the broker not reading) before it counts as failed.
WRITE_TIMEOUT = 10.0
#: The channel number this connection publishes on.
CHANNEL = 1

_frame_head = struct.Struct(">BHI")
_publish_head = struct.pack(">HHH", 60, 40, 0)  # Basic.Publish, ticket 0
_content_head = struct.Struct(">HHQ")  # class 60, weight 0, body size
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3


def _shortstr(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {text[:40]!r}...")
    return bytes((len(raw),)) + raw


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _frame_head.pack(kind, channel, len(payload)) + payload + _FRAME_END


def _close_at_exit(ref: weakref.ref[DirectPublisher]) -> None:
    publisher = ref()
    if publisher is not None:
        publisher.close()


class _Closed(Exception):
    """The server closed the connection, or the stream ended: make a new one."""


class DirectPublisher:
    """See the module docstring. ``retries``/``delays``: the publish retry policy (attempts
    after the first, and the sleep before each)."""

    def __init__(self, params: AMQPParams, *, retries: int, delays: Callable[[int], float],
                 name: str = "celery-asyncio publisher") -> None:
        self.params = params
        self.name = name
        self._retries = retries
        self._delays = delays
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = 0
        self._frame_max = 131072
        self._heartbeat = 0.0
        self._last_write = 0.0
        self._since_look = 0
        self._buffer = b""
        self._returned: commands.Basic.Return | None = None
        self._ready_lock = threading.Lock()
        self._ready: set[str] = set()
        #: Connections made so far (tests and logs read it).
        self.connects = 0
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- which queues are ready ----------------------------------------------------------

    def ready(self, name: str) -> bool:
        with self._ready_lock:
            return name in self._ready

    def mark_ready(self, name: str) -> None:
        """The portal path declared queue ``name`` after this connection was made."""
        with self._ready_lock:
            self._ready.add(name)

    # -- publishing ----------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Properties,
                needs: str | None = None) -> bool:
        """Write one message (``mandatory``). ``needs``: the queue that must be ready (see
        ``ready``); False, with nothing written, when a new connection was just made and it
        is not. Raises ConnectionLost when the retries run out."""
        frames = self._frames(exchange, routing_key, body, properties)
        for attempt in range(self._retries + 1):
            try:
                with self._lock:
                    return self._write(frames, needs)
            except (OSError, _Closed, UnmarshalingException) as exc:
                if attempt >= self._retries:
                    raise ConnectionLost(
                        f"Publish to {self.params.safe_url} failed after {attempt + 1} "
                        f"attempt(s): {type(exc).__name__}: {exc}") from exc
                logger.debug("direct publish to %s failed (%r); retrying", self.params.safe_url,
                             exc)
            time.sleep(self._delays(attempt))
        raise AssertionError("not reached: the last attempt returns or raises")

    def _frames(self, exchange: str, routing_key: str, body: bytes,
                properties: Properties) -> list[bytes]:
        method = _publish_head + _shortstr(exchange) + _shortstr(routing_key) + b"\x01"
        out = [_frame(_METHOD, CHANNEL, method),
               _frame(_HEADER, CHANNEL, _content_head.pack(60, 0, len(body)) + properties.marshal())]
        step = self._frame_max - 8  # frame_max counts the 7-byte head and the end byte
        out.extend(_frame(_BODY, CHANNEL, body[at:at + step]) for at in range(0, len(body), step))
        return out

    def _write(self, frames: Sequence[bytes], needs: str | None) -> bool:
        """Under ``_lock``: (re)connect when needed, look at the socket when due, write."""
        now = time.monotonic()
        sock = self._sock
        if sock is not None and self._pid != os.getpid():
            sock = self._sock = None  # the parent's: never written to, nor closed, here
        if sock is not None and self._heartbeat and now - self._last_write > self._heartbeat / 2:
            self._close_politely(sock)  # the server may be about to give up on it: afresh
            sock = None
        elif sock is not None and (now - self._last_write > IDLE_LOOK
                                   or self._since_look >= LOOK_EVERY):
            try:
                self._look(sock)
            except (OSError, _Closed, UnmarshalingException) as exc:
                logger.warning("AMQP publisher connection to %s lost (%s: %s); connecting "
                               "again", self.params.safe_url, type(exc).__name__, exc)
                self._drop()
                sock = None
        if sock is None:
            sock = self._connect()
            if needs is not None and not self.ready(needs):
                return False  # declared through the portal first
        try:
            sock.sendall(b"".join(frames))
        except OSError:
            self._drop()
            raise
        self._last_write = time.monotonic()
        self._since_look += 1
        return True

    # -- reading what the server sent ----------------------------------------------------

    def _look(self, sock: socket.socket) -> None:
        """Read and handle whatever has arrived, without waiting."""
        self._since_look = 0
        sock.settimeout(0.0)
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break  # nothing more has arrived
                if not data:
                    raise _Closed("the server closed the stream")
                self._buffer += data
        finally:
            sock.settimeout(WRITE_TIMEOUT)
        self._handle_buffered(sock)

    def _next_frame(self) -> tuple[int, Any] | None:
        """``(channel, frame)`` taken from the buffer; None until a whole frame is there.
        Raises UnmarshalingException for a whole frame that cannot be read."""
        buffer = self._buffer
        if len(buffer) < 7 or len(buffer) < 8 + int.from_bytes(buffer[3:7], "big"):
            return None
        used, channel, frame = pamqp.frame.unmarshal(buffer)
        self._buffer = buffer[used:]
        return channel, frame

    def _handle_buffered(self, sock: socket.socket) -> None:
        while (taken := self._next_frame()) is not None:
            self._handle(sock, *taken)

    def _handle(self, sock: socket.socket, channel: int, frame: Any) -> None:
        if isinstance(frame, Heartbeat):
            return
        if isinstance(frame, commands.Basic.Return):
            self._returned = frame
        elif isinstance(frame, ContentHeader) and self._returned is not None:
            returned, self._returned = self._returned, None
            headers = frame.properties.headers or {}
            logger.warning(
                "RabbitMQ returned a message as unroutable (%s %s): exchange %r, routing key "
                "%r, task id %s", returned.reply_code, returned.reply_text, returned.exchange,
                returned.routing_key, headers.get("id") or frame.properties.correlation_id)
        elif isinstance(frame, commands.Channel.Close):
            logger.error("RabbitMQ closed the publishing channel: %s %s (class %s, method %s); "
                         "opening it again", frame.reply_code, frame.reply_text,
                         frame.class_id, frame.method_id)
            sock.sendall(pamqp.frame.marshal(commands.Channel.CloseOk(), channel))
            self._open_channel(sock)
        elif isinstance(frame, commands.Connection.Close):
            with contextlib.suppress(OSError):
                sock.sendall(pamqp.frame.marshal(commands.Connection.CloseOk(), 0))
            raise _Closed(f"the server closed the connection: {frame.reply_code} "
                          f"{frame.reply_text}")
        elif isinstance(frame, commands.Connection.Blocked):
            logger.warning("RabbitMQ blocks publishing on %s: %s", self.params.safe_url,
                           frame.reason)
        # Content bodies (of returned messages), Unblocked, and the rest: nothing to do.

    def _expect(self, sock: socket.socket, kind: type) -> Any:
        """Block (up to the socket's timeout) until a frame of ``kind`` comes; the others on
        the way are handled as ``_look`` handles them (a close fails the wait)."""
        while True:
            while (taken := self._next_frame()) is not None:
                channel, frame = taken
                if isinstance(frame, kind):
                    return frame
                if isinstance(frame, commands.Connection.Close | commands.Channel.Close):
                    raise _Closed(f"{frame.reply_code} {frame.reply_text}")
                self._handle(sock, channel, frame)  # a return, heartbeat, Blocked, ...
            data = sock.recv(65536)
            if not data:
                raise _Closed("the server closed the stream while connecting")
            self._buffer += data

    # -- connecting ----------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        p = self.params
        timeout = p.connect_timeout or 4.0
        sock = socket.create_connection((p.host, p.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
            sock.sendall(ProtocolHeader().marshal())
            self._expect(sock, commands.Connection.Start)
            response = f"\0{p.login}\0{p.password}"
            sock.sendall(pamqp.frame.marshal(commands.Connection.StartOk(
                client_properties={"connection_name": self.name, "product": "celery-asyncio",
                                   "capabilities": {"connection.blocked": True}},
                mechanism="PLAIN", response=response, locale="en_US"), 0))
            tune = self._expect(sock, commands.Connection.Tune)
            heartbeat = tune.heartbeat if p.heartbeat is None else int(p.heartbeat)
            self._frame_max = tune.frame_max or 131072
            self._heartbeat = float(heartbeat)
            sock.sendall(pamqp.frame.marshal(commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=self._frame_max,
                heartbeat=heartbeat), 0))
            sock.sendall(pamqp.frame.marshal(commands.Connection.Open(
                virtual_host=p.virtualhost), 0))
            self._expect(sock, commands.Connection.OpenOk)
            self._open_channel(sock)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        sock.settimeout(WRITE_TIMEOUT)
        self._sock, self._pid = sock, os.getpid()
        self._since_look = 0
        self._last_write = time.monotonic()
        if self.connects:  # a new connection: each queue declared again through the portal
            with self._ready_lock:
                self._ready.clear()
        self.connects += 1
        return sock

    def _open_channel(self, sock: socket.socket) -> None:
        sock.sendall(pamqp.frame.marshal(commands.Channel.Open(), CHANNEL))
        self._expect(sock, commands.Channel.OpenOk)

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer, self._returned = b"", None
        if sock is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Close the connection politely; a later publish connects again. Idempotent; any
        thread."""
        with self._lock:
            sock = self._sock
            if sock is None or self._pid != os.getpid():
                self._sock = None
                return
            self._close_politely(sock)

    def _close_politely(self, sock: socket.socket) -> None:
        """Under ``_lock``: Connection.Close, a short wait for CloseOk (so the server logs no
        lost client), then the socket closed."""
        try:
            sock.settimeout(1.0)
            sock.sendall(pamqp.frame.marshal(commands.Connection.Close(
                reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0), 0))
            self._expect(sock, commands.Connection.CloseOk)
        except (OSError, _Closed, UnmarshalingException):
            pass
        finally:
            self._drop()
