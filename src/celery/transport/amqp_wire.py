"""A Message on the AMQP wire, as kombu's py-amqp transport puts a Celery message there.

Publishing: the body as is; basic properties ``content_type``, ``content_encoding``,
``headers`` (the task headers as the AMQP table), ``delivery_mode`` (2, persistent, unless
the message says otherwise), ``priority`` (0 when unset, as kombu sends it),
``correlation_id`` and ``reply_to``, and the other AMQP basic properties a message carries
(``expiration``, ``message_id``, ``timestamp``, ``type``, ``user_id``, ``app_id``). Keys of
``Message.properties`` that are not AMQP properties (``delivery_info``, ``body_encoding``,
``delivery_tag``: the JSON envelope's own, see envelope.py) are not sent.

Receiving: the inverse, and ``delivery_info`` as Celery's ``request.delivery_info`` shows it:
``exchange``, ``routing_key``, ``priority``, ``redelivered``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from aio_pika.message import encode_expiration, encode_timestamp

from ..messaging.protocol import Message
from .amqp_codec import Properties
from .base import Delivery

if TYPE_CHECKING:
    from aiormq.abc import DeliveredMessage

__all__ = ["delivery_of", "to_amqp"]

#: AMQP basic properties copied between Message.properties and the wire, beside the
#: content type/encoding and headers that Message holds itself.
_COPIED = ("correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
           "user_id", "app_id")
#: Their names on pamqp's ``Basic.Properties`` where they differ.
_PROPERTY = {"type": "message_type"}


def to_amqp(message: Message, delivery_mode: int = 2) -> Properties:
    """The basic properties to publish ``message`` with (``delivery_mode`` when the message
    names none: the topology's, see amqp_topology.py): the values aio-pika's ``Message``
    would give (amqp_codec.py's ``Properties``, marshalled with its faster encoder to the
    same bytes)."""
    props = message.properties
    get = props.get
    out = Properties(
        content_type=message.content_type or None,
        content_encoding=message.content_encoding or None,
        headers=message.headers or {},
        delivery_mode=int(get("delivery_mode") or delivery_mode),
        priority=int(get("priority") or 0),
    )
    for name in _COPIED:
        value = get(name)
        if value is None:
            continue
        if name == "expiration":  # seconds in kombu's API; milliseconds as text on the wire
            value = encode_expiration(float(value))
        elif name == "timestamp":
            if isinstance(value, int | float):
                value = dt.datetime.fromtimestamp(value, dt.UTC)
            value = encode_timestamp(value)
        else:
            value = str(value)
        setattr(out, _PROPERTY.get(name, name), value)
    return out


def delivery_of(incoming: DeliveredMessage, queue: str, tag_prefix: str = "") -> Delivery:
    """A Delivery for a message received from ``queue`` (``raw`` keeps aiormq's message: its
    channel and delivery tag are the ack handle). AMQP delivery tags count per channel;
    ``tag_prefix`` names the channel, so that ``Delivery.delivery_tag`` is unique."""
    p = incoming.header.properties
    deliver: Any = incoming.delivery
    props: dict[str, Any] = {}
    if p.correlation_id is not None:
        props["correlation_id"] = p.correlation_id
    if p.reply_to is not None:
        props["reply_to"] = p.reply_to
    props["delivery_mode"] = int(p.delivery_mode or 1)
    props["priority"] = p.priority or 0
    for name, value in (("message_id", p.message_id), ("type", p.message_type),
                        ("user_id", p.user_id), ("app_id", p.app_id)):
        if value is not None:
            props[name] = value
    if p.expiration is not None:  # milliseconds as text on the wire; seconds here, as kombu
        try:
            props["expiration"] = int(p.expiration) / 1000
        except ValueError:
            props["expiration"] = p.expiration
    if p.timestamp is not None:
        props["timestamp"] = p.timestamp.timestamp()
    exchange = deliver.exchange or ""
    routing_key = deliver.routing_key or queue
    message = Message(
        body=incoming.body,
        content_type=p.content_type or "",
        content_encoding=p.content_encoding or "",
        headers=dict(p.headers or {}),
        properties=props,
        exchange=exchange,
        routing_key=routing_key,
    )
    redelivered = bool(deliver.redelivered)
    info = {"exchange": exchange, "routing_key": routing_key, "priority": props["priority"],
            "redelivered": redelivered}
    return Delivery(message, f"{tag_prefix}{deliver.delivery_tag}", queue, incoming,
                    redelivered, info)
