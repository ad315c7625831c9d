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

from ..exceptions import DecodeError
from ..messaging import limits
from ..messaging.protocol import Message, uuid4_str
from .base import Delivery

__all__ = ["clamp_priority", "decode", "encode", "loads", "mark_redelivered", "priority_of"]

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
        DecodeError: ``item`` is not a valid envelope (too large or deeply nested for
            ``messaging/limits.py``, not JSON, fields missing or of the wrong type). Nothing
            else: a transport catches this one type at its boundary and dead-letters ``item``.
    """
    try:  # (limits.loads_json's steps, inline: this runs once per message)
        # Decoded to text first: json.loads would sniff bytes for UTF-16/32 in Python code.
        text = item.decode() if isinstance(item, bytes) else item
        if len(text) > limits.QUICK:
            # limits.check's first test, inline. The body, first in kombu's envelopes and
            # ours, is base64: no quote in it, and no bracket to count.
            start = max(text.find('"', 10), 0) if text.startswith('{"body": "') else 0
            if len(text) > limits.MAX_BYTES or \
                    text.count("[", start) + text.count("{", start) >= limits.MAX_DEPTH:
                limits.check(text, "message envelope", inside_string=start)
        env = json.loads(text)
        # A field of the wrong type raises below (AttributeError, TypeError, ...) or is
        # refused here; either way a DecodeError.
        props, body, headers = env["properties"], env["body"], env.get("headers") or {}
        if props.get("body_encoding") == "base64":
            raw = binascii.a2b_base64(body, strict_mode=True)
        else:
            raw = body.encode()
        info = props.get("delivery_info") or {}
        exchange, routing_key = info.get("exchange") or "", info.get("routing_key") or queue
        content_type = env.get("content-type") or ""
        content_encoding = env.get("content-encoding") or ""
        if type(headers) is not dict or type(exchange) is not str or \
                type(routing_key) is not str or type(content_type) is not str or \
                type(content_encoding) is not str:
            raise DecodeError("not a kombu message envelope: headers is not a mapping, or "
                              "exchange, routing key or content type not text")
        redelivered = bool(info.get("redelivered") or headers.get("redelivered"))
    except DecodeError:
        raise
    except Exception as exc:  # not JSON, a field of an unexpected type, RecursionError...
        raise DecodeError(f"not a kombu message envelope: {type(exc).__name__}: {exc}") from None
    message = Message(
        body=raw,
        content_type=content_type,
        content_encoding=content_encoding,
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


def loads(item: bytes | str) -> dict[str, Any]:
    """The JSON object of an envelope, within ``messaging/limits.py``'s bounds (its fields
    are not checked: for marking a stored envelope redelivered).

    Raises:
        DecodeError: not JSON, too large or too deep, or not a JSON object.
    """
    env = limits.loads_json(item, "message envelope")
    if not isinstance(env, dict):
        raise DecodeError(f"not a kombu message envelope: a JSON {type(env).__name__}")
    return env


def mark_redelivered(envelope: dict[str, Any]) -> str:
    """The envelope marked as kombu marks a restored message, serialized."""
    if isinstance(envelope.get("headers"), dict):
        envelope["headers"]["redelivered"] = True
    props = envelope.get("properties")
    info = props.get("delivery_info") if isinstance(props, dict) else None
    if isinstance(info, dict):
        info["redelivered"] = True
    return json.dumps(envelope)


def priority_of(envelope: dict[str, Any]) -> int:
    """The envelope's priority (0 when missing or not a number)."""
    props = envelope.get("properties")
    return clamp_priority(props.get("priority") if isinstance(props, dict) else 0)


def clamp_priority(value: Any) -> int:
    """A message priority as every transport stores it: 0..9, 0 when missing or not a
    number (JSON's ``Infinity`` and ``NaN`` included)."""
    try:
        return min(max(int(value or 0), 0), 9)
    except (TypeError, ValueError, OverflowError):
        return 0
