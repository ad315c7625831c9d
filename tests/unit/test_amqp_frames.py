"""amqp_frames: our connections' frame reader gives pamqp's frames, and fails cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt

import aio_pika
import pytest
from aiormq.exceptions import InvalidFrameError
from pamqp import commands
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from celery.messaging.protocol import Message
from celery.transport import amqp_frames
from celery.transport.amqp_envelope import encode_floats_as_doubles
from celery.transport.amqp_frames import FastStreamReader, FrameReceiver, decode_frame
from celery.transport.amqp_wire import to_amqp

encode_floats_as_doubles()  # as every AMQP user of ours does: floats as doubles


def _fields(frame: object) -> dict[str, object]:
    """A pamqp method frame's arguments (its frames have no ``__eq__``)."""
    return {name: getattr(frame, name, None) for name in getattr(frame, "__slots__", ())}


def _split(wire: bytes) -> tuple[bytes, bytes, int, int, int]:
    kind, channel, size = pframe.frame_parts(wire)
    return wire[:7], wire[7:], kind, channel, size or 0


DELIVERY = [
    commands.Basic.Deliver("ctag-1", 7, False, "", "celery"),
    commands.Basic.Deliver("amq.ctag-xyz", 2**40, True, "tasks", "ünï.key"),
    ContentHeader(0, 3, commands.Basic.Properties(
        content_type="application/json", content_encoding="utf-8",
        headers={"task": "t", "retries": 1, "timelimit": [None, 1.5], "stamps": {}},
        delivery_mode=2, priority=0, correlation_id="id", reply_to="r", message_id="m",
        timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))),
    ContentBody(b"[[], {}, {}]"),
    Heartbeat(),
    commands.Basic.Ack(5, True),
    commands.Basic.ConsumeOk("ctag"),
]


@pytest.mark.parametrize("frame", DELIVERY, ids=lambda f: type(f).__name__)
def test_frames_decode_as_pamqp_decodes_them(frame: object) -> None:
    wire = pframe.marshal(frame, 3)
    theirs = pframe.unmarshal(wire)
    ours = decode_frame(*_split(wire))
    assert ours[:2] == theirs[:2] and type(ours[2]) is type(theirs[2])
    if isinstance(frame, ContentHeader):
        assert ours[2].properties == theirs[2].properties
        assert (ours[2].body_size, ours[2].class_id) == (theirs[2].body_size, theirs[2].class_id)
    elif isinstance(frame, ContentBody):
        assert ours[2].value == theirs[2].value
    else:
        assert _fields(ours[2]) == _fields(theirs[2])
        assert _fields(ours[2]) or isinstance(frame, Heartbeat)


@pytest.mark.parametrize("wire", [
    pframe.marshal(commands.Basic.Deliver("t", 1, False, "", "q"), 1)[:-1] + b"\x00",
    pframe.marshal(commands.Basic.Deliver("t", 1, False, "", "q"), 1)[:-3] + b"\xce",
    b"\x01\x00\x01\x00\x00\x00\x08\x00<\x00<\x09ab\xce",
    b"\x02\x00\x01\x00\x00\x00\x04\x00<\x00\x00\xce",
])
def test_malformed_frames_raise_one_line(wire: bytes) -> None:
    head, rest = wire[:7], wire[7:]
    kind, channel, _ = pframe.frame_parts(head)
    with pytest.raises(ValueError, match=r"^malformed AMQP [^\n]+$"):
        decode_frame(head, rest, kind, channel, len(rest) - 1)


async def _frames(reader: asyncio.StreamReader, data: bytes) -> list[object]:
    reader.feed_data(data)
    reader.feed_eof()
    receiver = FrameReceiver(reader)
    return [frame async for _, _, frame in receiver]


async def test_a_fast_stream_yields_a_deliverys_frames_then_ends() -> None:
    frames = [DELIVERY[0], DELIVERY[2], DELIVERY[3]]
    data = b"".join(pframe.marshal(f, 1) for f in frames)
    got = await _frames(FastStreamReader(), data)
    assert [type(f) for f in got] == [type(f) for f in frames]
    assert _fields(got[0]) == _fields(frames[0]) and got[1].properties == frames[1].properties


async def test_a_malformed_frame_on_a_fast_stream_is_refused_with_one_line() -> None:
    bad = pframe.marshal(DELIVERY[0], 1)[:-1] + b"\x00"
    with pytest.raises(InvalidFrameError, match=r"does not end with 0xCE"):
        await _frames(FastStreamReader(), bad)


async def test_other_streams_keep_aiormqs_reader() -> None:
    data = pframe.marshal(DELIVERY[0], 1)
    plain = asyncio.StreamReader()
    assert [_fields(f) for f in await _frames(plain, data)] == [_fields(DELIVERY[0])]


async def test_our_connections_and_only_ours_use_the_fast_stream() -> None:
    cls = amqp_frames.connection_class()
    assert cls is not aio_pika.RobustConnection and issubclass(cls, aio_pika.RobustConnection)
    conn = cls("amqp://guest:guest@127.0.0.1/")
    assert isinstance(conn.kwargs["transport_factory"], amqp_frames.FastTransportFactory)
    assert "transport_factory" not in aio_pika.RobustConnection("amqp://h/").kwargs


def test_published_properties_are_those_aio_pikas_message_would_send() -> None:
    message = Message(body=b"{}", content_type="application/json", content_encoding="utf-8",
                      headers={"task": "t", "f": 0.5},
                      properties={"correlation_id": "c", "reply_to": "r", "priority": 3,
                                  "expiration": 1.5, "timestamp": 1_700_000_000.0,
                                  "type": "ty", "app_id": "a", "delivery_tag": "x"})
    ours = to_amqp(message, 2)
    reference = aio_pika.Message(
        b"{}", headers={"task": "t", "f": 0.5}, content_type="application/json",
        content_encoding="utf-8", delivery_mode=2, priority=3, correlation_id="c",
        reply_to="r", expiration=1.5, type="ty", app_id="a",
        timestamp=dt.datetime.fromtimestamp(1_700_000_000.0, dt.UTC)).properties
    assert ours == reference and ours.marshal() == reference.marshal()
    bare = Message(body=b"", content_type="", content_encoding="", headers={}, properties={})
    assert to_amqp(bare, 1).marshal() == aio_pika.Message(b"", delivery_mode=1).properties.marshal()
