"""Serializers (json, msgpack, yaml, pickle), kombu-compatible, and the accept-content
check.

JSON follows kombu's encoding of rich types: datetime, date, time, UUID, Decimal and bytes
are written as ``{"__type__": name, "__value__": value}`` and decoded back to the same type
(UUID's value is ``{"hex": ...}``; bytes that are not UTF-8 use the ``base64`` marker).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pickle
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..exceptions import ContentDisallowed, DecodeError, ImproperlyConfigured, SecurityError
from . import limits

__all__ = [
    "Serializer",
    "accept_set",
    "dumps",
    "loads",
    "registry",
    "serializer_by_name",
]


@dataclass(frozen=True, slots=True)
class Serializer:
    """One registered serializer: encode/decode functions and its MIME type and encoding."""

    name: str
    content_type: str
    content_encoding: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


# -- json ------------------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    # Order matters: datetime is a subclass of date.
    if isinstance(obj, dt.datetime):
        return {"__type__": "datetime", "__value__": obj.isoformat()}
    if isinstance(obj, dt.date):
        return {"__type__": "date", "__value__": obj.isoformat()}
    if isinstance(obj, dt.time):
        return {"__type__": "time", "__value__": obj.isoformat()}
    if isinstance(obj, uuid.UUID):
        return {"__type__": "uuid", "__value__": {"hex": obj.hex}}
    if isinstance(obj, Decimal):
        return {"__type__": "decimal", "__value__": str(obj)}
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return {"__type__": "bytes", "__value__": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(raw).decode("ascii")}
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    for attr in ("__json__", "isoformat"):
        method = getattr(obj, attr, None)
        if callable(method):
            return method()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_JSON_DECODERS: dict[str, Callable[[str], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "uuid": lambda v: uuid.UUID(hex=v["hex"] if isinstance(v, dict) else v),
    "decimal": Decimal,
    "bytes": lambda v: v.encode("utf-8"),
    "base64": base64.b64decode,
}


def _json_object_hook(obj: dict) -> Any:
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        decoder = _JSON_DECODERS.get(obj["__type__"])
        if decoder is not None:
            return decoder(obj["__value__"])
    return obj


_json_encoder = json.JSONEncoder(
    default=_json_default, ensure_ascii=True, separators=(", ", ": "), check_circular=False
)
_json_decoder = json.JSONDecoder(object_hook=_json_object_hook)


def json_dumps(obj: Any) -> str:
    """Encode ``obj`` as kombu-style JSON text."""
    return _json_encoder.encode(obj)


def json_loads(data: str | bytes) -> Any:
    """Decode kombu-style JSON text (or UTF-8 bytes), within ``messaging/limits.py``'s
    bounds (DecodeError past them)."""
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data).decode("utf-8")
    if len(data) > limits.QUICK:  # shorter cannot be too deep (see limits.py)
        limits.check(data, "JSON payload")
    return _json_decoder.decode(data)


def _json_encode(obj: Any) -> bytes:
    return _json_encoder.encode(obj).encode("utf-8")


# -- msgpack ---------------------------------------------------------------------------------

def _msgpack_encode(obj: Any) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID | Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not msgpack serializable")


def _msgpack_decode(data: bytes) -> Any:
    import msgpack

    return msgpack.unpackb(data, raw=False)


# -- yaml (PyYAML's safe dumper and loader, as kombu) ------------------------------------------

def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ImproperlyConfigured("The yaml serializer needs PyYAML: pip install pyyaml") \
            from None
    return yaml


def _yaml_encode(obj: Any) -> bytes:
    return _yaml().safe_dump(obj, allow_unicode=True).encode("utf-8")


def _yaml_decode(data: bytes) -> Any:
    """PyYAML's safe loader (plain data only: no Python objects), within the JSON bounds of
    ``messaging/limits.py`` (its parser recurses per level of nesting too)."""
    yaml = _yaml()
    text = data.decode("utf-8")
    if len(text) > limits.QUICK:
        limits.check(text, "YAML payload")
    return yaml.safe_load(text)


# -- pickle ----------------------------------------------------------------------------------

def _pickle_encode(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL)


registry: dict[str, Serializer] = {}
_by_content_type: dict[str, Serializer] = {}


def register(serializer: Serializer) -> None:
    """Register a serializer under its name and its content type."""
    registry[serializer.name] = serializer
    _by_content_type[serializer.content_type] = serializer


register(Serializer("json", "application/json", "utf-8", _json_encode, json_loads))
register(Serializer("msgpack", "application/x-msgpack", "binary", _msgpack_encode, _msgpack_decode))
register(Serializer("yaml", "application/x-yaml", "utf-8", _yaml_encode, _yaml_decode))
register(Serializer("pickle", "application/x-python-serialize", "binary", _pickle_encode, pickle.loads))
# kombu also accepts these aliases for msgpack.
_by_content_type["application/msgpack"] = registry["msgpack"]


def serializer_by_name(name: str) -> Serializer:
    """The serializer registered as ``name`` (a name like "json" or a content type)."""
    ser = registry.get(name) or _by_content_type.get(name)
    if ser is None:
        known = ", ".join(sorted(registry))
        raise ImproperlyConfigured(f"Unknown serializer {name!r}; known serializers: {known}")
    return ser


def accept_set(accept: Iterable[str] | None) -> frozenset[str]:
    """Turn an ``accept_content`` list (names or content types) into a set of content types."""
    if accept is None:
        accept = ["json"]
    out = set()
    for item in accept:
        ser = registry.get(item)
        out.add(ser.content_type if ser else item)
        if ser and ser.name == "msgpack":
            out.add("application/msgpack")
    return frozenset(out)


def dumps(obj: Any, serializer: str = "json") -> tuple[bytes, str, str]:
    """Serialize ``obj``; returns ``(payload, content_type, content_encoding)``."""
    ser = serializer_by_name(serializer)
    return ser.encode(obj), ser.content_type, ser.content_encoding


def loads(
    data: bytes | str,
    content_type: str | None,
    content_encoding: str | None = None,
    accept: frozenset[str] | None = None,
) -> Any:
    """Deserialize a payload after checking its content type against ``accept``.

    Raises:
        ContentDisallowed: the content type is not accepted.
        DecodeError: the payload is not valid for its content type.
    """
    if not content_type:
        content_type = "application/data"
    if accept is not None and content_type not in accept:
        raise ContentDisallowed(
            f"Refusing to deserialize untrusted content of type {content_type} "
            f"(accepted: {', '.join(sorted(accept))})"
        )
    ser = _by_content_type.get(content_type)
    if ser is None:
        if content_type in ("application/data", "application/text"):
            return data
        raise DecodeError(f"No decoder registered for content type {content_type!r}")
    try:
        if isinstance(data, str):
            data = data.encode(content_encoding or "utf-8")
        return ser.decode(data)
    except (DecodeError, ContentDisallowed, SecurityError):
        raise
    except Exception as exc:  # RecursionError, MemoryError, ...: the payload's fault
        raise DecodeError(f"Could not decode {content_type} payload: {exc}") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(data: str | bytes) -> bytes:
    return base64.b64decode(data)
