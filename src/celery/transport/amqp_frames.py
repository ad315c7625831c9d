"""A faster AMQP frame reader for our RabbitMQ connections (aiormq's, with amqp_codec.py).

aiormq reads each frame with three ``readexactly`` calls into a ``BytesIO`` and decodes it
with pamqp; a delivered message is three frames (``Basic.Deliver``, a content header, a body),
and that reading and decoding was two thirds of a worker's time in the AMQP client. Our
connections read each frame with two ``readexactly`` calls and decode the frames of a
delivery with amqp_codec.py (equal results to pamqp's); every other frame (the handshake,
heartbeats, the other methods) is still pamqp's.

Our connections only: aiormq makes its frame reader from a module-level class, so
``install`` (once per process, under ``_install_lock``) puts ``FrameReceiver`` there, a
subclass that behaves exactly as aiormq's own unless its stream is a ``FastStreamReader``:
the stream that ``FastTransportFactory`` opens, which ``connection_class()`` (our aio-pika
robust connection) hands to aiormq. Other aio-pika users in the process keep aiormq's reader.

A malformed frame raises aiormq's ``InvalidFrameError`` with one line, as pamqp's errors do:
the connection closes, the robust connection reconnects, and the server redelivers what
was not acknowledged.

Thread-safety: a reader is used only on its connection's loop; ``install`` takes a lock.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
import threading
from typing import Any

import aiormq.connection as aiormq_connection
import pamqp.frame
from aio_pika import RobustConnection
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException

from .amqp_codec import decode_content_header

__all__ = ["FastStreamReader", "FastTransportFactory", "connection_class", "install"]

_frame_head = struct.Struct(">BHI").unpack
_deliver_tail = struct.Struct(">QB").unpack_from
_FRAME_END = 0xCE
#: The first four bytes of a Basic.Deliver method frame's payload (class 60, method 60).
_DELIVER = struct.pack(">HH", 60, 60)
_Deliver = commands.Basic.Deliver

_install_lock = threading.Lock()  # guards the one-time swap of aiormq's reader class
logger = logging.getLogger(__name__)

#: Older aiormq releases (aio-pika 9.x) take no transport factory: there, aiormq's reader.
SUPPORTED = (hasattr(aiormq_connection, "TransportFactory")
             and "transport_factory" in inspect.signature(aiormq_connection.Connection).parameters)
_FactoryBase: Any = getattr(aiormq_connection, "TransportFactory", object)


class FastStreamReader(asyncio.StreamReader):
    """A plain ``asyncio.StreamReader`` that marks a connection as ours (see module doc)."""


class FastTransportFactory(_FactoryBase):
    """Opens the TCP (or TLS) stream of one of our connections, as aiormq's factories do,
    with a ``FastStreamReader``."""

    def __init__(self, tls: bool) -> None:
        self.tls = tls

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader,
                                                             asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if self.tls and provider is not None else None
        loop = asyncio.get_running_loop()
        reader = FastStreamReader(limit=2**16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(lambda: protocol, url.host, url.port,
                                                        ssl=ssl, **kwargs)
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class FrameReceiver(aiormq_connection.FrameReceiver):
    """aiormq's frame reader; on a ``FastStreamReader``, a faster one (module doc)."""

    async def get_frame(self) -> Any:
        if not isinstance(self.reader, FastStreamReader):
            return await super().get_frame()
        reader = self.reader
        if reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        async with self.lock:
            try:
                head = await reader.readexactly(7)
                if not self.started and head.startswith(b"AMQP"):
                    raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                self.started = True
                kind, channel, size = _frame_head(head)
                rest = await reader.readexactly(size + 1)
            except asyncio.IncompleteReadError as exc:
                raise AMQPConnectionError(
                    f"Server connection unexpectedly closed. Read {len(exc.partial)} bytes "
                    f"but {exc.expected} bytes expected") from exc
            except (ConnectionError, OSError) as exc:
                raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
        try:
            return decode_frame(head, rest, kind, channel, size)
        except ValueError as exc:
            raise InvalidFrameError(str(exc)) from None


def decode_frame(head: bytes, rest: bytes, kind: int, channel: int, size: int) -> Any:
    """(bytes consumed, channel, frame) as ``pamqp.frame.unmarshal(head + rest)`` gives it,
    decoding a delivery's frames with amqp_codec.py. Raises ``ValueError`` (one line) or
    pamqp's ``UnmarshalingException``."""
    if rest[-1] != _FRAME_END:
        raise ValueError(f"malformed AMQP frame: it does not end with 0xCE (type {kind})")
    if kind == 3:  # body
        return size + 8, channel, ContentBody(rest[:-1])
    if kind == 2:  # content header
        return size + 8, channel, decode_content_header(rest[:-1])
    if kind == 1 and rest[:4] == _DELIVER:
        return size + 8, channel, _decode_deliver(rest, size)
    try:
        return pamqp.frame.unmarshal(head + rest)
    except PAMQPException as exc:
        raise ValueError(f"malformed AMQP frame: {exc}") from None


def _decode_deliver(data: bytes, size: int) -> commands.Basic.Deliver:
    """A Basic.Deliver method frame's arguments (after its 4-byte method id)."""
    try:
        pos = 5 + data[4]
        consumer_tag = data[5:pos].decode()
        delivery_tag, bits = _deliver_tail(data, pos)
        pos += 9
        end = pos + 1 + data[pos]
        exchange = data[pos + 1:end].decode()
        routing_end = end + 1 + data[end]
        routing_key = data[end + 1:routing_end].decode()
    except (IndexError, struct.error, UnicodeDecodeError):
        raise ValueError("malformed AMQP Basic.Deliver frame") from None
    if routing_end != size:
        raise ValueError("malformed AMQP Basic.Deliver frame: its length does not match")
    frame = _Deliver.__new__(_Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = delivery_tag
    frame.redelivered = bool(bits & 1)
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


def install() -> None:
    """Put ``FrameReceiver`` in aiormq's module (once per process; idempotent)."""
    with _install_lock:
        if aiormq_connection.FrameReceiver is not FrameReceiver:
            aiormq_connection.FrameReceiver = FrameReceiver  # type: ignore[misc]


class _CeleryRobustConnection(RobustConnection):
    """aio-pika's robust connection, opening its streams with ``FastTransportFactory``
    (where this aiormq takes a transport factory)."""

    #: ``broker_use_ssl``'s ``server_hostname``, set on a subclass by ``connection_class``:
    #: the name a TLS connection sends (SNI) and checks the certificate against, instead of
    #: the URL's host. aiormq hands its extra keyword arguments to the transport factory,
    #: which passes them to asyncio's ``create_connection`` (ours and aiormq's alike).
    server_hostname: str | None = None

    def __init__(self, url: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        tls = self.url.scheme == "amqps"
        if SUPPORTED:
            self.kwargs["transport_factory"] = FastTransportFactory(tls)
        if tls and self.server_hostname:
            self.kwargs["server_hostname"] = self.server_hostname


def connection_class(server_hostname: str | None = None) -> type[RobustConnection]:
    """The robust connection class for ``aio_pika.connect_robust(connection_class=...)``,
    with ``install`` done; with ``server_hostname``, TLS connections send and check that
    name instead of the URL's host."""
    if SUPPORTED:
        install()
    if server_hostname:
        return type("_CeleryRobustConnection", (_CeleryRobustConnection,),
                    {"server_hostname": server_hostname})
    return _CeleryRobustConnection if SUPPORTED else RobustConnection
