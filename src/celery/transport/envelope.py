"""kombu's JSON envelope: how a message is stored in a queue by every non-AMQP transport.

Redis, SQLite, the filesystem and the in-memory broker all keep a message as kombu's virtual
transports do (``{"body", "content-encoding", "content-type", "headers", "properties"}``,
body base64-encoded, ``properties.delivery_info`` holding exchange and routing key), so a
message means the same thing whichever broker carries it, and upstream Celery reads it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..messaging.protocol import Message, uuid4_str
from .base import Delivery

__all__ = ["decode", "encode", "mark_redelivered", "priority_of"]

#: Properties ``encode`` writes itself (in kombu's order) rather than copying from the Message.
_PLACED = frozenset(
    ("correlation_id", "reply_to", "delivery_mode", "delivery_info", "priority")
    + ("body_encoding", "delivery_tag")
)


def encode(message: Message, delivery_tag: str | None = None) -> tuple[str, str, int]:
    """``(delivery tag, JSON envelope, priority)`` for a message, properties in kombu's order."""
    given = message.properties
    props: dict[str, Any] = {}
    if "correlation_id" in given:
        props["correlation_id"] = given["correlation_id"]
    if "reply_to" in given:
        props["reply_to"] = given["reply_to"]
    props["delivery_mode"] = given.get("delivery_mode", 2)
    for name, value in given.items():
        if name not in _PLACED:
            props[name] = value
    props["delivery_info"] = {"exchange": message.exchange, "routing_key": message.routing_key}
    priority = props["priority"] = given.get("priority") or 0
    props["body_encoding"] = "base64"
    tag = props["delivery_tag"] = delivery_tag or uuid4_str()
    payload = json.dumps(
        {
            "body": base64.b64encode(message.body).decode("ascii"),
            "content-encoding": message.content_encoding,
            "content-type": message.content_type,
            "headers": message.headers,
            "properties": props,
        }
    )
    return tag, payload, priority


def decode(tag: str, item: bytes | str, queue: str) -> Delivery:
    """Parse one envelope into a Delivery.

    Raises:
        ValueError, KeyError, TypeError, AttributeError: ``item`` is not a valid envelope.
    """
    # Decoded to text first: json.loads would sniff the bytes for UTF-16/32 in Python code.
    env = json.loads(item.decode() if isinstance(item, bytes) else item)
    props = env["properties"]
    body = env["body"]
    if props.get("body_encoding") == "base64":
        body = binascii.a2b_base64(body, strict_mode=True)
    else:
        body = body.encode()
    headers = env.get("headers") or {}
    info = props.get("delivery_info") or {}
    exchange, routing_key = info.get("exchange") or "", info.get("routing_key") or queue
    redelivered = bool(info.get("redelivered") or headers.get("redelivered"))
    message = Message(
        body=body,
        content_type=env.get("content-type") or "",
        content_encoding=env.get("content-encoding") or "",
        headers=headers,
        properties=props,
        exchange=exchange,
        routing_key=routing_key,
    )
    delivery_info = {
        "exchange": exchange,
        "routing_key": routing_key,
        "priority": props.get("priority"),
        "redelivered": redelivered,
    }
    return Delivery(message, tag, queue, item, redelivered, delivery_info)


def mark_redelivered(envelope: dict[str, Any]) -> str:
    """The envelope marked as kombu marks a restored message, serialized."""
    if isinstance(envelope.get("headers"), dict):
        envelope["headers"]["redelivered"] = True
    info = envelope.get("properties", {}).get("delivery_info")
    if isinstance(info, dict):
        info["redelivered"] = True
    return json.dumps(envelope)


def priority_of(envelope: dict[str, Any]) -> int:
    """The envelope's priority (0 when missing or not a number)."""
    try:
        return int(envelope["properties"]["priority"] or 0)
    except (KeyError, TypeError, ValueError):
        return 0
