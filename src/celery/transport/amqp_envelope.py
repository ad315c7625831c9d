"""A kombu JSON envelope as the AMQP message it stands for, and back (remote control and events).

Our side of the ``Mailbox`` protocol (transport/base.py) hands payloads around as kombu
envelopes (transport/envelope.py); on RabbitMQ each is sent as kombu on py-amqp sends the
message: the body is the message body; content type, encoding and headers are the message's;
``delivery_mode`` and the other properties are AMQP properties. What is received becomes an
envelope again, ``delivery_info`` holding its exchange and routing key.

pamqp (aio-pika's encoder) writes a float header as a 32-bit float; py-amqp writes a double.
``encode_floats_as_doubles`` makes pamqp write doubles, once per process.

Thread-safety: pure functions, except the one-time patch, made under ``_doubles_lock``.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..exceptions import DecodeError
from ..messaging.protocol import Message
from . import envelope

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

__all__ = ["TRANSIENT", "encode_floats_as_doubles", "from_amqp", "to_amqp"]

logger = logging.getLogger("celery.transport.amqp_mailbox")

#: Transient, as kombu publishes control messages, replies and (by default) events.
TRANSIENT = 1

_doubles_lock = threading.Lock()  # guards the one-time patch below


def encode_floats_as_doubles() -> None:
    """Make pamqp (aio-pika's encoder) write a float in a header table as an AMQP double
    (``d``), as py-amqp does, instead of a 32-bit float (``f``). A 32-bit float holds an
    epoch only to the nearest 128 s: a control message's ``expires`` header
    (``time() + timeout``) would arrive up to a minute early, and the worker would drop the
    command as expired (or an upstream one would). Idempotent; patches pamqp's module
    function once, for the whole process (pamqp offers no option for it).
    """
    from pamqp import encode

    with _doubles_lock:
        if getattr(encode.encode_table_value, "_celery_doubles", False):
            return
        original = encode.encode_table_value

        def encode_table_value(value: Any) -> bytes:
            if isinstance(value, float):
                return b"d" + encode.double(value)
            return original(value)

        encode_table_value._celery_doubles = True  # type: ignore[attr-defined]
        encode.encode_table_value = encode_table_value


def to_amqp(payload: str) -> Any:
    """The AMQP message a kombu envelope stands for: its body (not the envelope) as the
    message body; content type and encoding, headers, delivery mode, priority,
    correlation id and reply-to as AMQP properties, as kombu on py-amqp publishes them.

    Raises:
        DecodeError: ``payload`` is not a kombu envelope, or a header cannot go in an AMQP
            table.
    """
    import aio_pika

    encode_floats_as_doubles()
    message = envelope.decode("", payload, "").message
    props = message.properties
    try:
        return aio_pika.Message(
            message.body, headers=message.headers or None,
            content_type=message.content_type or None,
            content_encoding=message.content_encoding or None,
            delivery_mode=int(props.get("delivery_mode") or TRANSIENT),
            priority=props.get("priority") or None,
            correlation_id=props.get("correlation_id"), reply_to=props.get("reply_to"))
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"cannot send this message over AMQP: {exc}") from None


def from_amqp(incoming: AbstractIncomingMessage, where: str) -> str | None:
    """The kombu envelope of a received AMQP message (``delivery_info`` holding its exchange
    and routing key), as the Redis transport would deliver it; ``None``, with one warning,
    for a message no kombu client could have sent: no content type, or a text body that
    is not in its encoding (UTF-8)."""
    body, content_type = incoming.body, incoming.content_type or ""
    encoding = incoming.content_encoding or ""
    problem = "no content type" if not content_type else None
    if problem is None and encoding.lower().replace("-", "") in ("utf8", ""):
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            problem = f"a body that is not UTF-8 ({exc})"
    if problem is not None:
        logger.warning("Dropping a malformed message from %s (%s): %r", where, problem,
                       body[:120])
        return None
    props: dict[str, Any] = {}
    for name in ("correlation_id", "reply_to"):
        if getattr(incoming, name, None):
            props[name] = getattr(incoming, name)
    props["delivery_mode"] = int(incoming.delivery_mode or TRANSIENT)
    if incoming.priority:
        props["priority"] = incoming.priority
    message = Message(body=body, content_type=content_type, content_encoding=encoding,
                      headers=_jsonable(dict(incoming.headers or {})), properties=props,
                      exchange=incoming.exchange or "", routing_key=incoming.routing_key or "")
    return envelope.encode(message)[1]


def _jsonable(value: Any) -> Any:
    """An AMQP table value as JSON can hold it (py-amqp's types: bytes, Decimal, datetime)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    return value
