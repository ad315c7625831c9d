"""AMQP 0-9-1 field tables and basic properties, decoded and encoded as pamqp does, faster.

pamqp (aio-pika's codec) decodes a field table one value at a time through generic
helpers that slice the rest of the buffer for every value; a Celery message carries about
twenty protocol-2 headers, and that decoding was most of a worker's time in the AMQP client.
These functions give results equal to pamqp's (the same Python types and values, the same
bytes when encoding) with one pass over the buffer and no copies:

- ``decode_table``: a field table, with pamqp's reading of the type letters (RabbitMQ's
  errata: ``s`` a signed 16-bit integer, ``l`` and ``L`` signed 64-bit, ``S`` text, or bytes
  when not UTF-8, ``x`` a bytearray, ``T`` a UTC datetime, ``D`` a Decimal, ``V`` None);
- ``decode_content_header``: a content header frame's payload as pamqp's ``ContentHeader``;
- ``encode_table``: a dict as pamqp writes it (keys sorted, integers in the smallest type,
  floats as doubles, as py-amqp sends them and as ``amqp_envelope.encode_floats_as_doubles``
  makes pamqp do), falling back to pamqp for the types it alone handles;
- ``Properties``: pamqp's ``Basic.Properties`` whose ``marshal`` uses ``encode_table``.

Malformed input (a length past the end of its table or frame, an unknown type letter)
raises ``ValueError`` with one line naming what is wrong; the frame reader
(amqp_frames.py) turns it into aiormq's ``InvalidFrameError``, which closes the connection
(the robust connection then reconnects and the server redelivers what was unacked).

Thread-safety: pure functions over their arguments.
"""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal
from typing import Any

from pamqp import commands, encode
from pamqp.header import ContentHeader

__all__ = ["Properties", "decode_content_header", "decode_table", "encode_table"]

_u8 = struct.Struct(">B").unpack_from
_i8 = struct.Struct(">b").unpack_from
_u16 = struct.Struct(">H").unpack_from
_i16 = struct.Struct(">h").unpack_from
_u32 = struct.Struct(">I").unpack_from
_i32 = struct.Struct(">i").unpack_from
_i64 = struct.Struct(">q").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_f32 = struct.Struct(">f").unpack_from
_f64 = struct.Struct(">d").unpack_from
_header_head = struct.Struct(">HHQ").unpack_from
_pack_u32 = struct.Struct(">I").pack
_pack_u8 = struct.Struct(">B").pack
_pack_i8 = struct.Struct(">b").pack
_pack_i16 = struct.Struct(">h").pack
_pack_u16 = struct.Struct(">H").pack
_pack_i32 = struct.Struct(">i").pack
_pack_i64 = struct.Struct(">q").pack
_pack_f64 = struct.Struct(">d").pack
_UTC = dt.UTC

#: Fixed-size table values: type letter (as an int) -> (size, unpack_from).
_FIXED: dict[int, tuple[int, Any]] = {
    ord("b"): (1, _i8), ord("B"): (1, _u8), ord("s"): (2, _i16), ord("u"): (2, _u16),
    ord("I"): (4, _i32), ord("i"): (4, _u32), ord("l"): (8, _i64), ord("L"): (8, _i64),
    ord("f"): (4, _f32), ord("d"): (8, _f64),
}
_S, _V, _NUL, _T_BOOL = ord("S"), ord("V"), 0, ord("t")
_F, _A, _X, _T, _D = ord("F"), ord("A"), ord("x"), ord("T"), ord("D")


def _need(end: int, limit: int, what: str) -> None:
    if end > limit:
        raise ValueError(f"malformed AMQP field table: {what} runs past its end")


def _value(data: bytes, pos: int, limit: int) -> tuple[Any, int]:
    """The table value whose type letter is at ``pos``, and the position after it."""
    kind = data[pos]
    pos += 1
    if kind == _S:
        _need(pos + 4, limit, "a long string's length")
        end = pos + 4 + _u32(data, pos)[0]
        _need(end, limit, "a long string")
        raw = data[pos + 4:end]
        try:
            return raw.decode(), end
        except UnicodeDecodeError:
            return raw, end  # as pamqp: bytes when not UTF-8
    fixed = _FIXED.get(kind)
    if fixed is not None:
        size, unpack = fixed
        _need(pos + size, limit, "a number")
        return unpack(data, pos)[0], pos + size
    if kind == _V or kind == _NUL:
        return None, pos
    if kind == _T_BOOL:
        _need(pos + 1, limit, "a boolean")
        return data[pos] != 0, pos + 1
    if kind == _F or kind == _A:
        _need(pos + 4, limit, "a nested table's length")
        end = pos + 4 + _u32(data, pos)[0]
        _need(end, limit, "a nested table or array")
        if kind == _F:
            return _table(data, pos + 4, end), end
        return _array(data, pos + 4, end), end
    if kind == _X:
        _need(pos + 4, limit, "a byte array's length")
        end = pos + 4 + _u32(data, pos)[0]
        _need(end, limit, "a byte array")
        return bytearray(data[pos + 4:end]), end
    if kind == _T:
        _need(pos + 8, limit, "a timestamp")
        return _timestamp(_u64(data, pos)[0]), pos + 8
    if kind == _D:
        _need(pos + 5, limit, "a decimal")
        return Decimal(_i32(data, pos + 1)[0]) * (Decimal(10) ** -data[pos]), pos + 5
    raise ValueError(f"malformed AMQP field table: unknown value type {bytes([kind])!r}")


def _timestamp(seconds: float) -> dt.datetime:
    if seconds > 0xFFFFFFFF:  # as pamqp: past 2106 it is taken for milliseconds
        seconds /= 1000.0
    try:
        return dt.datetime.fromtimestamp(seconds, tz=_UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"malformed AMQP timestamp {seconds!r}: {exc}") from None


def _table(data: bytes, pos: int, end: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    while pos < end:
        key_end = pos + 1 + data[pos]
        _need(key_end, end, "a field name")
        try:
            key = data[pos + 1:key_end].decode()
        except UnicodeDecodeError:
            raise ValueError("malformed AMQP field table: a field name is not UTF-8") from None
        _need(key_end + 1, end, "a field's type")
        out[key], pos = _value(data, key_end, end)
    return out


def _array(data: bytes, pos: int, end: int) -> list[Any]:
    out: list[Any] = []
    while pos < end:
        value, pos = _value(data, pos, end)
        out.append(value)
    return out


def decode_table(data: bytes, offset: int = 0) -> tuple[dict[str, Any], int]:
    """The field table at ``offset`` of ``data`` (its 32-bit length first) and the offset
    after it. Raises ``ValueError`` (one line) for a malformed table."""
    _need(offset + 4, len(data), "the table's length")
    end = offset + 4 + _u32(data, offset)[0]
    _need(end, len(data), "the table")
    return _table(data, offset + 4, end), end


#: Basic properties in wire order: (attribute, flag bit, kind) with kind 0 a short
#: string, 1 a table, 2 an octet, 3 a timestamp.
_PROPERTIES = (("content_type", 0x8000, 0), ("content_encoding", 0x4000, 0),
               ("headers", 0x2000, 1), ("delivery_mode", 0x1000, 2), ("priority", 0x0800, 2),
               ("correlation_id", 0x0400, 0), ("reply_to", 0x0200, 0),
               ("expiration", 0x0100, 0), ("message_id", 0x0080, 0),
               ("timestamp", 0x0040, 3), ("message_type", 0x0020, 0), ("user_id", 0x0010, 0),
               ("app_id", 0x0008, 0), ("cluster_id", 0x0004, 0))


def decode_content_header(payload: bytes) -> ContentHeader:
    """A content header frame's payload (class id, weight, body size, flags, properties) as
    pamqp's ``ContentHeader``, equal to what pamqp decodes. Raises ``ValueError`` (one
    line) when it is malformed."""
    limit = len(payload)
    if limit < 14:
        raise ValueError("malformed AMQP content header: shorter than 14 bytes")
    class_id, weight, body_size = _header_head(payload, 0)
    flags, pos, word = 0, 12, 0
    while True:  # flag words, each with bit 0 saying that another follows
        _need(pos + 2, limit, "the property flags")
        part = _u16(payload, pos)[0]
        flags |= (part & 0xFFFE) << (16 * word)
        pos += 2
        word += 1
        if not part & 1:
            break
    props = commands.Basic.Properties()
    for name, bit, kind in _PROPERTIES:
        if not flags & bit:
            continue
        value: Any
        if kind == 0:
            _need(pos + 1, limit, f"property {name}")
            end = pos + 1 + payload[pos]
            _need(end, limit, f"property {name}")
            try:
                value = payload[pos + 1:end].decode()
            except UnicodeDecodeError:
                raise ValueError(f"malformed AMQP content header: {name} is not UTF-8") from None
            pos = end
        elif kind == 1:
            value, pos = decode_table(payload, pos)
        elif kind == 2:
            _need(pos + 1, limit, f"property {name}")
            value, pos = payload[pos], pos + 1
        else:
            _need(pos + 8, limit, f"property {name}")
            value, pos = _timestamp(_u64(payload, pos)[0]), pos + 8
        setattr(props, name, value)
    header = ContentHeader(weight, body_size, props)
    header.class_id = class_id
    return header


# -- encoding ----------------------------------------------------------------------------


def _short(value: Any) -> bytes:
    if type(value) is not str:
        return encode.short_string(value)  # pamqp's TypeError
    raw = value.encode()
    if len(raw) > 255:
        raise TypeError("string exceeds maximum length of 255 bytes")
    return _pack_u8(len(raw)) + raw


def _encode_value(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is str:
        raw = value.encode()
        out.append(b"S" + _pack_u32(len(raw)) + raw)
    elif value is None:
        out.append(b"V")
    elif kind is bool:
        out.append(b"t\x01" if value else b"t\x00")
    elif kind is int and -128 <= value <= 127 and not encode.DEPRECATED_RABBITMQ_SUPPORT:
        out.append(b"b" + _pack_i8(value))
    elif kind is float:
        out.append(b"d" + _pack_f64(value))  # a double, as py-amqp (see amqp_envelope.py)
    elif kind is dict:
        out.append(b"F" + encode_table(value))
    elif kind is list:
        inner: list[bytes] = []
        for item in value:
            _encode_value(item, inner)
        body = b"".join(inner)
        out.append(b"A" + _pack_u32(len(body)) + body)
    elif kind is int and not encode.DEPRECATED_RABBITMQ_SUPPORT:
        out.append(_integer(value))
    elif isinstance(value, float):  # a float subclass: pamqp's patched encoder writes it so
        out.append(b"d" + _pack_f64(value))
    else:  # Decimal, datetime, bytearray, subclasses, and the errors for the rest: pamqp's
        out.append(encode.encode_table_value(value))


def _integer(value: int) -> bytes:
    if -32768 <= value <= 32767:
        return b"s" + _pack_i16(value)
    if 0 <= value <= 65535:
        return b"u" + _pack_u16(value)
    if -2147483648 <= value <= 2147483647:
        return b"I" + _pack_i32(value)
    if 0 <= value <= 4294967295:
        return b"i" + _pack_u32(value)
    if -9223372036854775808 <= value <= 9223372036854775807:
        return b"l" + _pack_i64(value)
    raise TypeError(f"Unsupported numeric value: {value}")


def encode_table(table: dict[str, Any] | None) -> bytes:
    """``table`` as an AMQP field table (its 32-bit length first), the bytes pamqp writes
    with floats as doubles. Raises ``TypeError`` for a value no table can hold."""
    if not table:
        return b"\x00\x00\x00\x00"
    if type(table) is not dict:
        return encode.field_table(table)  # a dict subclass, or pamqp's TypeError
    out: list[bytes] = []
    for key, value in sorted(table.items()):
        if len(key) > 128 or not key.isascii():  # pamqp's truncation of long names
            return encode.field_table(table)
        out.append(_pack_u8(len(key)) + key.encode())
        try:
            _encode_value(value, out)
        except TypeError as exc:
            raise TypeError(f"{key} error: {exc}") from exc
    body = b"".join(out)
    return _pack_u32(len(body)) + body


class Properties(commands.Basic.Properties):
    """pamqp's ``Basic.Properties``, marshalled with ``encode_table`` (the same bytes)."""

    def marshal(self) -> bytes:
        flags = 0
        parts: list[bytes] = []
        for name, bit, kind in _PROPERTIES:
            value = getattr(self, name)
            if value is None or value == "":
                continue
            flags |= bit
            if kind == 0:
                parts.append(_short(value))
            elif kind == 1:
                parts.append(encode_table(value))
            elif kind == 2:
                parts.append(encode.octet(value))
            else:
                parts.append(encode.timestamp(value))
        return _pack_u16(flags) + b"".join(parts)
