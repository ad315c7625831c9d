"""Remote-control messages as kombu's ``Mailbox`` ("pidbox") sends them.

A command is broadcast on the fanout exchange ``<control_exchange>.pidbox`` (``celery.pidbox``)
with the JSON body ``{"method", "arguments", "destination", "pattern", "matcher"}`` plus, when
replies are wanted, ``"ticket"`` and ``"reply_to": {"exchange": "reply.celery.pidbox",
"routing_key": <client oid>}``; headers ``{"clock", "expires"}`` (``expires`` is an epoch,
0 for none). A worker answers ``{<its hostname>: <reply>}`` on the direct reply exchange with
that routing key and the header ``{"ticket", "clock"}``; the client reads its reply queue
``<oid>.reply.celery.pidbox``. Both exchanges are transient (``delivery_mode`` 1) and the
serializer is JSON, as Celery configures its mailbox.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from typing import Any

from ..exceptions import ContentDisallowed, DecodeError, InvalidMessage
from ..transport import envelope as envelope_codec
from . import limits
from .protocol import Message

__all__ = ["decode", "encode", "exchanges", "expired", "match_destination"]

_JSON = "application/json"


def exchanges(control_exchange: str) -> tuple[str, str]:
    """``(broadcast exchange, reply exchange)`` for the ``control_exchange`` setting."""
    return f"{control_exchange}.pidbox", f"reply.{control_exchange}.pidbox"


def encode(body: dict[str, Any], exchange: str, routing_key: str, headers: dict[str, Any]) -> str:
    """The kombu envelope (a JSON string) of one control message or reply."""
    message = Message(
        body=json.dumps(body).encode(), content_type=_JSON, content_encoding="utf-8",
        headers=headers, properties={"delivery_mode": 1}, exchange=exchange,
        routing_key=routing_key,
    )
    return envelope_codec.encode(message)[1]


def decode(payload: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(body, headers)`` of an envelope.

    Raises:
        DecodeError: not a kombu envelope, or its body is not a JSON object.
        ContentDisallowed: not JSON (remote control accepts JSON only, as Celery's does).
    """
    message = envelope_codec.decode("", payload, "").message
    if message.content_type != _JSON:
        raise ContentDisallowed(f"content type {message.content_type!r} is not accepted "
                                "(remote control uses JSON)")
    body = limits.loads_json(message.body, "control message body")
    if not isinstance(body, dict):
        raise DecodeError("control message body is not a JSON object")
    return body, message.headers


def expired(headers: dict[str, Any], now: float | None = None) -> bool:
    """True when the ``expires`` header (an epoch; 0 or missing: never) has passed."""
    try:
        expires = float(headers.get("expires") or 0)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past a float's range
        return False
    return bool(expires) and (time.time() if now is None else now) > expires


def match_destination(body: dict[str, Any], hostname: str) -> bool:
    """Is a broadcast ``body`` for ``hostname``? kombu's rules: a ``destination`` list names
    the nodes; otherwise ``pattern`` with ``matcher`` ("glob", the default, or "pcre");
    otherwise every node.

    Raises:
        InvalidMessage: ``destination`` is not a list of names, or ``pattern``/``matcher``
            are not text, or the pcre pattern does not compile.
    """
    destination = body.get("destination")
    if destination:
        if not isinstance(destination, list | tuple | str):
            raise InvalidMessage(f"destination must be a list of node names, not "
                                 f"{type(destination).__name__}")
        return hostname in destination  # (a string: kombu's substring test, kept)
    pattern, matcher = body.get("pattern"), body.get("matcher")
    if pattern and matcher:
        if not isinstance(pattern, str) or not isinstance(matcher, str):
            raise InvalidMessage("pattern and matcher must be text")
        if matcher == "pcre":
            try:
                return re.search(pattern, hostname) is not None
            except (re.error, RecursionError, OverflowError) as exc:
                raise InvalidMessage(f"invalid pcre pattern {pattern[:80]!r}: {exc}") from None
        return fnmatch.fnmatch(hostname, pattern)
    return True
