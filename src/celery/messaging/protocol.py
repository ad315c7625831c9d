"""Celery task protocol v2: build task messages and read them back.

A task message is headers + properties + body, where the body is the serialized
``[args, kwargs, embed]`` triple and ``embed`` carries the canvas (callbacks, errbacks,
chain, chord). The transport decides how a :class:`Message` is laid out on its wire.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import InvalidMessage
from . import serialization

__all__ = ["Message", "TaskBody", "build_task_message", "decode_body", "encode_body",
           "task_headers", "uuid4_str"]


def uuid4_str() -> str:
    """``str(uuid.uuid4())``, the same random version-4 UUID text, in about half the time
    (task ids and delivery tags: two per message sent)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NODENAME = f"gen{os.getpid()}@{socket.gethostname()}"
#: Upstream fills reply_to with a per-process id (its RPC reply queue); we do the same.
REPLY_TO = str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Message:
    """A message in wire form, independent of any transport."""

    body: bytes
    content_type: str
    content_encoding: str
    headers: dict[str, Any]
    #: AMQP-style properties: correlation_id, reply_to, priority, delivery_mode, ...
    properties: dict[str, Any] = field(default_factory=dict)
    #: Where the message is to go: exchange and routing_key (the queue on Redis).
    exchange: str = ""
    routing_key: str = "celery"
    #: The queue the sender's route chose when a routing key was given too (then
    #: ``routing_key`` is that key), else None; not sent. AMQP publishes by both as upstream
    #: does (``Topology.target``).
    queue: str | None = None

    @property
    def priority(self) -> int | None:
        return self.properties.get("priority")


@dataclass(frozen=True, slots=True)
class TaskBody:
    """The decoded body of a task message."""

    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]


#: Containers nested deeper than this show as ``[...]``/``{...}`` in argsrepr, as upstream.
_REPR_MAXLEVEL = 3


def _repr(obj: Any, depth: int) -> str:
    if isinstance(obj, dict):
        if depth > _REPR_MAXLEVEL:
            return "{...}"
        return "{" + ", ".join(f"{_repr(k, depth + 1)}: {_repr(v, depth + 1)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        left, right = ("[", "]") if isinstance(obj, list) else ("(", ")")
        if depth > _REPR_MAXLEVEL:
            return f"{left}...{right}"
        inner = ", ".join(_repr(item, depth + 1) for item in obj)
        if isinstance(obj, tuple) and len(obj) == 1:
            inner += ","
        return left + inner + right
    if isinstance(obj, bytes):
        try:
            obj.decode("utf-8")
        except UnicodeDecodeError:
            return f"b'{obj.hex()}'"  # upstream shows undecodable bytes as hex
    return repr(obj)


def saferepr(obj: Any, maxsize: int = 1024) -> str:
    """A bounded repr for the argsrepr/kwargsrepr headers (insertion order, depth-limited)."""
    try:
        text = _repr(obj, 1)
    except Exception as exc:  # a user's __repr__ may raise
        text = f"<unrepresentable {type(obj).__name__}: {exc!r}>"
    return text if len(text) <= maxsize else text[: maxsize - 3] + "..."


def epoch_of(value: Any) -> float | None:
    """Epoch seconds of an ``eta``/``expires`` header (ISO-8601 text or a datetime; naive
    means UTC); None when it is empty.

    Raises:
        ValueError: the value is not a date and time.
    """
    if not value:
        return None
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _iso(value: dt.datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def task_headers(
    name: str,
    task_id: str,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    eta: dt.datetime | str | None = None,
    expires: dt.datetime | str | None = None,
    retries: int = 0,
    group_id: str | None = None,
    group_index: int | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    shadow: str | None = None,
    origin: str | None = None,
    ignore_result: bool | None = False,
    argsrepr: str | None = None,
    kwargsrepr: str | None = None,
    argsrepr_maxsize: int = 1024,
    replaced_task_nesting: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Protocol v2 headers, in the order upstream Celery writes them."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": shadow,
        "eta": _iso(eta),
        "expires": _iso(expires),
        "group": group_id,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr if argsrepr is not None else saferepr(args, argsrepr_maxsize),
        "kwargsrepr": kwargsrepr
        if kwargsrepr is not None
        else saferepr(dict(kwargs or {}), argsrepr_maxsize),
        "origin": origin or _NODENAME,
        "ignore_result": ignore_result,
        "replaced_task_nesting": replaced_task_nesting,
        "stamped_headers": None,
        "stamps": {},
    }
    if extra:
        headers.update(extra)
    return headers


def build_task_message(
    name: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    task_id: str | None = None,
    serializer: str = "json",
    queue: str = "celery",
    exchange: str = "",
    priority: int | None = None,
    reply_to: str | None = None,
    callbacks: list | None = None,
    errbacks: list | None = None,
    chain: list | None = None,
    chord: Any = None,
    routed_queue: str | None = None,
    **header_options: Any,
) -> Message:
    """Build a complete protocol v2 task message.

    ``queue`` is the routing key (the queue's name unless the sender gave a key);
    ``routed_queue`` the queue the route chose when the sender gave a key, kept in
    ``Message.queue``.
    """
    task_id = task_id or uuid4_str()
    kwargs = dict(kwargs or {})
    headers = task_headers(name, task_id, args=args, kwargs=kwargs, **header_options)
    body, content_type, content_encoding = encode_body(args, kwargs, serializer, callbacks,
                                                      errbacks, chain, chord)
    properties: dict[str, Any] = {"correlation_id": task_id, "reply_to": reply_to or REPLY_TO}
    properties["priority"] = priority or 0
    return Message(
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers=headers,
        properties=properties,
        exchange=exchange,
        routing_key=queue,
        queue=routed_queue,
    )


def encode_body(args: Sequence[Any], kwargs: dict[str, Any], serializer: str,
                callbacks: list | None = None, errbacks: list | None = None,
                chain: list | None = None, chord: Any = None) -> tuple[bytes, str, str]:
    """The v2 body ``[args, kwargs, embed]``, serialized: ``(body, content type, encoding)``."""
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    return serialization.dumps((list(args), kwargs, embed), serializer)


def decode_body(
    body: bytes, content_type: str, content_encoding: str, accept: frozenset[str]
) -> TaskBody:
    """Decode and validate a v2 body ``[args, kwargs, embed]``.

    Raises:
        ContentDisallowed, DecodeError: from the serializer.
        InvalidMessage: the payload is not an ``[args, kwargs, embed]`` triple.
    """
    payload = serialization.loads(body, content_type, content_encoding, accept)
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        raise InvalidMessage(
            f"Task body must be [args, kwargs, embed], got {type(payload).__name__}"
            + (f" of length {len(payload)}" if isinstance(payload, list | tuple) else "")
        )
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise InvalidMessage("Task body args must be a list and kwargs a mapping")
    return TaskBody(list(args), kwargs, embed if isinstance(embed, dict) else {})


def check_headers(headers: Any) -> tuple[str, str]:
    """Validate the headers of a received task message; returns ``(task name, task id)``."""
    if not isinstance(headers, dict):
        raise InvalidMessage("Message has no headers: not a Celery protocol v2 task message")
    name, task_id = headers.get("task"), headers.get("id")
    if not isinstance(name, str) or not name:
        raise InvalidMessage("Message headers have no 'task' name (protocol v1 is not supported)")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidMessage(f"Message for task {name!r} has no 'id' header")
    return name, task_id
