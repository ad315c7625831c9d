"""amqp_codec: field tables and basic properties decode and encode exactly as pamqp does."""

from __future__ import annotations

import datetime as dt
import random
import struct
from decimal import Decimal

import pytest
from pamqp import commands, decode, encode
from pamqp import frame as pframe
from pamqp.header import ContentHeader

from celery.transport.amqp_codec import (
    Properties,
    decode_content_header,
    decode_table,
    encode_table,
)
from celery.transport.amqp_envelope import encode_floats_as_doubles

encode_floats_as_doubles()  # what every AMQP user of ours sets up: floats as doubles

UTC = dt.UTC


def _entry(kind: bytes, payload: bytes) -> bytes:
    return kind + payload


#: One table value per AMQP type letter, hand-encoded: (letter, wire bytes after the letter).
EVERY_TYPE = [
    (b"t", b"\x01"), (b"t", b"\x00"), (b"b", b"\xff"), (b"B", b"\xff"),
    (b"s", struct.pack(">h", -2)), (b"u", struct.pack(">H", 65535)),
    (b"I", struct.pack(">i", -5)), (b"i", struct.pack(">I", 4294967295)),
    (b"l", struct.pack(">q", -(2**62))), (b"L", struct.pack(">q", 2**62)),
    (b"f", struct.pack(">f", 1.5)), (b"d", struct.pack(">d", 1e300)),
    (b"D", b"\x02" + struct.pack(">i", -12345)),
    (b"S", struct.pack(">I", 3) + b"abc"), (b"S", struct.pack(">I", 2) + b"\xff\xfe"),
    (b"T", struct.pack(">Q", 1_700_000_000)), (b"T", struct.pack(">Q", 1_700_000_000_123)),
    (b"V", b""), (b"\x00", b""), (b"x", struct.pack(">I", 3) + b"\x00\x01\x02"),
    (b"A", struct.pack(">I", 7) + b"b\x01S\x00\x00\x00\x00"),
    (b"F", struct.pack(">I", 0)),
]


def _table(pairs: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(bytes([len(k)]) + k + v for k, v in pairs)
    return struct.pack(">I", len(body)) + body


def test_every_value_type_decodes_as_pamqp_does() -> None:
    pairs = [(f"k{i}".encode(), kind + payload) for i, (kind, payload) in enumerate(EVERY_TYPE)]
    wire = _table(pairs)
    ours, end = decode_table(wire)
    theirs = decode.field_table(wire)
    assert (end, ours) == theirs and end == len(wire)
    assert [type(v) for v in ours.values()] == [type(v) for v in theirs[1].values()]
    assert ours["k14"] == b"\xff\xfe" and ours["k19"] == bytearray(b"\x00\x01\x02")


def test_nested_tables_and_arrays_decode_as_pamqp_does() -> None:
    inner = _table([(b"x", b"S" + struct.pack(">I", 1) + b"y"), (b"n", b"V")])
    array_body = b"F" + inner + b"A" + struct.pack(">I", 2) + b"b\x07" + b"d" + struct.pack(">d", 0.5)
    wire = _table([(b"outer", b"F" + inner),
                   (b"list", b"A" + struct.pack(">I", len(array_body)) + array_body)])
    assert decode_table(wire)[::-1] == decode.field_table(wire)
    assert decode_table(wire)[0]["list"] == [{"x": "y", "n": None}, [7], 0.5]


def _random_value(rng: random.Random, depth: int) -> object:
    choice = rng.randrange(12 if depth < 3 else 9)
    if choice == 0:
        return rng.choice(["", "text", "ünïcode", "x" * 300])
    if choice == 1:
        return rng.choice([0, 1, -1, 127, -128, 128, 255, 32767, -32768, 65535, 65536,
                           2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63)])
    if choice == 2:
        return rng.choice([True, False])
    if choice == 3:
        return None
    if choice == 4:
        return rng.choice([0.0, 1.25, -3.5e-7, 1.7e9 + 0.123])
    if choice == 5:
        return Decimal(rng.choice(["1.5", "-0.001", "12345", "3E+2"]))
    if choice == 6:
        return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    if choice == 7:
        return bytearray(rng.randbytes(rng.randrange(5)))
    if choice == 8:
        return rng.choice(["id-" + str(rng.randrange(10**6)), "celery@host"])
    if choice in (9, 10):
        return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_random_tables_encode_to_pamqps_bytes_and_decode_to_its_values() -> None:
    rng = random.Random(24)
    for _ in range(300):
        table = {f"h{i}_{rng.randrange(99)}": _random_value(rng, 0) for i in range(rng.randrange(8))}
        wire = encode_table(table)
        assert wire == encode.field_table(table)
        assert decode_table(wire)[::-1] == decode.field_table(wire)


def test_celery_protocol2_headers_round_trip() -> None:
    headers = {"lang": "py", "task": "bench.noop", "id": "0c2f1d7e-6a4b-4e8e-9a54-5b7b8f1e2d3c",
               "shadow": None, "eta": None, "expires": None, "group": None, "group_index": None,
               "retries": 0, "timelimit": [None, 30.0], "root_id": "0c2f", "parent_id": None,
               "argsrepr": "()", "kwargsrepr": "{}", "origin": "gen1@host",
               "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
               "stamps": {}}
    wire = encode_table(headers)
    assert wire == encode.field_table(headers)
    assert decode_table(wire)[0] == headers


def test_encoding_errors_are_pamqps() -> None:
    for bad in ({"k": object()}, {"k": 2**64}, {"k": (1, 2)}, {"k": b"bytes"}):
        with pytest.raises(TypeError) as ours:
            encode_table(bad)
        with pytest.raises(TypeError) as theirs:
            encode.field_table(bad)
        assert str(ours.value) == str(theirs.value)


def test_long_or_non_ascii_names_are_written_as_pamqp_writes_them() -> None:
    table = {"é" * 70: 1, "n" * 140: "v"}
    assert encode_table(table) == encode.field_table(table)


@pytest.mark.parametrize("wire", [
    b"\x00\x00", b"\x00\x00\x00\x09\x01k", _table([(b"k", b"S\x00\x00\x00\x09ab")]),
    _table([(b"k", b"Z")]), _table([(b"k", b"I\x00")]), _table([(b"k", b"F\x00\x00\x01\x00")]),
    _table([(b"\xff", b"V")]), _table([(b"k", b"T" + struct.pack(">Q", 2**63))]),
])
def test_malformed_tables_fail_with_one_line(wire: bytes) -> None:
    with pytest.raises(ValueError, match=r"^malformed AMQP [^\n]+$"):
        decode_table(wire)


def _header_payload(props: commands.Basic.Properties, body_size: int = 42) -> bytes:
    return pframe.marshal(ContentHeader(0, body_size, props), 1)[7:-1]


def test_content_headers_decode_as_pamqp_does() -> None:
    full = commands.Basic.Properties(
        content_type="application/json", content_encoding="utf-8",
        headers={"task": "t", "retries": 3, "nested": {"a": [1, "b"]}}, delivery_mode=2,
        priority=9, correlation_id="c-1", reply_to="r", expiration="1000", message_id="m",
        timestamp=dt.datetime(2026, 12, 6, tzinfo=UTC), message_type="ty", user_id="guest",
        app_id="app")
    for props in (full, commands.Basic.Properties(), commands.Basic.Properties(headers={})):
        payload = _header_payload(props)
        theirs = ContentHeader()
        theirs.unmarshal(payload)
        ours = decode_content_header(payload)
        assert (ours.class_id, ours.weight, ours.body_size) == (60, 0, 42)
        assert ours.properties == theirs.properties
        assert {s: getattr(ours.properties, s) for s in ours.properties.__slots__} == \
            {s: getattr(theirs.properties, s) for s in theirs.properties.__slots__}


def test_properties_marshal_to_pamqps_bytes() -> None:
    kwargs = dict(content_type="application/json", content_encoding="utf-8",
                  headers={"f": 0.25, "n": None, "l": [1, 2.5]}, delivery_mode=2, priority=0,
                  correlation_id="c", reply_to="q", message_id="m",
                  timestamp=dt.datetime(2026, 1, 1, tzinfo=UTC), app_id="a")
    assert Properties(**kwargs).marshal() == commands.Basic.Properties(**kwargs).marshal()
    assert Properties().marshal() == commands.Basic.Properties().marshal()


@pytest.mark.parametrize("payload", [
    b"\x00<\x00\x00", b"\x00<\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x80",
    b"\x00<\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x80\x00\x05ab",
    b"\x00<\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x20\x00\x00\x00\x00\x05\x01k",
])
def test_malformed_content_headers_fail_with_one_line(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"^malformed AMQP [^\n]+$"):
        decode_content_header(payload)
