"""The Redis transport's paths when the connection breaks around a blocking wait (issue 27,
item 7): a message handed over early whose record in ``unacked`` cannot be made, a wait
whose reply is lost on the way, a wait cut while it blocks; and the restore of malformed
``unacked`` entries. Through the fault proxy (tests/faults/proxy.py) in front of the real
Redis; the checks read Redis directly."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

import pytest
import valkey

from celery.exceptions import ConnectionLost
from celery.messaging.protocol import build_task_message
from celery.transport import redis as redis_transport
from celery.transport.redis import DEAD_LETTER_KEY, RedisTransport
from tests.conftest import REDIS_PORT

from .brokers import REDIS_DB, make_broker
from .proxy import FaultProxy


@pytest.fixture
def broker(tmp_path: Path):
    """The fault tests' Redis database, emptied: ``(direct client, proxy in front of it,
    direct URL)``."""
    url = make_broker("redis", tmp_path).url
    raw = valkey.Valkey.from_url(url)
    proxy = FaultProxy(REDIS_PORT)
    yield raw, proxy, url
    proxy.close()
    raw.close()


def via(proxy: FaultProxy) -> RedisTransport:
    """A transport that reaches Redis through the proxy, with a short connect timeout."""
    return RedisTransport(proxy.url(REDIS_DB), transport_options={
        "client_name": f"waits-{uuid.uuid4().hex[:8]}", "socket_connect_timeout": 1})


#: The commands a blocking wait's connection was last seen running.
WAITS = ("blmove", "llen", "client|reply", "zadd")


def payload(transport: RedisTransport, n: int) -> str:
    return transport.envelope_of(build_task_message("fault.echo", (n,), task_id=f"w-{n}"))[1]


def reserved_items(raw: valkey.Valkey) -> list[bytes]:
    keys = raw.keys("celery-asyncio.reserved.*")
    return [item for key in keys for item in raw.lrange(key, 0, -1)]


async def until(check, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.01)


async def blocked_in_wait(raw: valkey.Valkey, transport: RedisTransport) -> None:
    """Until the transport's blocking waits (one per priority step) block in Redis, and
    still do 0.1 s later: a wait of an earlier short fetch (0.01 s) may be seen blocked
    for a moment, and its reply still be on its way while the test cuts the connection."""
    name = transport._kwargs["client_name"]
    steps = len(transport.priority_steps)

    def blocked() -> set[str]:
        return {c["id"] for c in raw.client_list() if c.get("name") == name
                and c.get("cmd") == "blmove" and "b" in c.get("flags", "")}

    deadline = time.monotonic() + 5
    while True:
        first = blocked()
        if len(first) == steps:
            await asyncio.sleep(0.1)
            if blocked() == first:
                return
        assert time.monotonic() < deadline, "no blocking waits within 5 s"
        await asyncio.sleep(0.01)


async def close(transport: RedisTransport) -> None:
    await transport.aclose()
    transport.close()


async def test_a_handed_over_message_whose_record_fails_for_a_while_is_recorded_once(
        broker, caplog):
    """The broker goes away between the hand-over and the record: the record is retried,
    and once the broker is back the message is in ``unacked``, handed over once."""
    raw, proxy, _ = broker
    transport = via(proxy)
    handed = []

    def early(delivery):
        handed.append(delivery)
        proxy.down()
        asyncio.get_running_loop().call_later(0.3, proxy.up)
        return False  # not settled on the spot: it must be recorded

    try:
        assert await transport.fetch(["celery"], 10, 0.01) == []
        fetching = asyncio.ensure_future(transport.fetch(["celery"], 10, 5, early=early))
        await blocked_in_wait(raw, transport)
        raw.lpush("celery", payload(transport, 1))
        with caplog.at_level(logging.WARNING, logger="celery.transport.redis"):
            assert await fetching == []
        [delivery] = handed
        assert "Could not record running task message" in caplog.text
        assert {t.decode() for t in raw.hkeys("unacked")} == {delivery.delivery_tag}
        assert reserved_items(raw) == [] and raw.llen("celery") == 0
        assert await transport.fetch(["celery"], 10, 0.2, early=early) == []  # not again
        await transport.ack([delivery])
        assert raw.exists("unacked", "unacked_index") == 0
    finally:
        proxy.unmute()
        proxy.up()
        await close(transport)


@pytest.mark.parametrize("cut", ["every connection", "the record's"])
async def test_a_handed_over_message_that_cannot_be_recorded_comes_again(
        broker, caplog, monkeypatch, cut):
    """The broker goes away past the record's retries (cutting every connection, or only
    the record's, the waits' staying up): the fetch fails, the message waits in the
    consumer's reserved list (not lost), and the next fetch, the broker back, gives it back
    and hands it over again (it may run twice, as the error says), recorded this time; the
    connections left idle meanwhile do not fail that fetch."""
    monkeypatch.setattr(redis_transport, "RECORD_RETRIES", (0.05, 0.05, None))
    raw, proxy, _ = broker
    transport = via(proxy)
    name = transport._kwargs["client_name"]
    handed = []

    def early(delivery):
        handed.append(delivery)
        if len(handed) == 1 and cut == "every connection":
            proxy.down()
        elif len(handed) == 1:
            proxy.down(reset=False)  # the blocking waits' connections go on
            for client in raw.client_list():  # the pool's connection (the fetch script's)
                if client.get("name") == name and client.get("cmd") not in WAITS:
                    raw.client_kill_filter(_id=client["id"])
        return False

    try:
        assert await transport.fetch(["celery"], 10, 0.01) == []
        fetching = asyncio.ensure_future(transport.fetch(["celery"], 10, 5, early=early))
        await blocked_in_wait(raw, transport)
        raw.lpush("celery", payload(transport, 2))
        with caplog.at_level(logging.WARNING, logger="celery.transport.redis"), \
                pytest.raises(ConnectionLost):
            await fetching
        assert "could not be recorded in unacked" in caplog.text
        assert len(reserved_items(raw)) == 1 and raw.hlen("unacked") == 0  # kept, not lost
        proxy.up()
        assert await transport.fetch(["celery"], 10, 5, early=early) == []
        first, again = handed
        assert again.delivery_tag == first.delivery_tag
        assert {t.decode() for t in raw.hkeys("unacked")} == {again.delivery_tag}
        assert reserved_items(raw) == [] and raw.llen("celery") == 0
        await transport.ack([again])
        assert raw.exists("unacked", "unacked_index") == 0
    finally:
        proxy.unmute()
        proxy.up()
        await close(transport)


async def test_a_wait_whose_reply_is_lost_gives_its_message_back(broker):
    """The blocking wait moved a message, and its reply never arrived (the connection broke
    on the way): the fetch fails while the broker is away, the message stays in the
    reserved list, and the next fetch gives it back and delivers it, once."""
    raw, proxy, _ = broker
    transport = via(proxy)
    try:
        assert await transport.fetch(["celery"], 10, 0.01) == []
        fetching = asyncio.ensure_future(transport.fetch(["celery"], 10, 5))
        await blocked_in_wait(raw, transport)
        proxy.mute()
        raw.lpush("celery", payload(transport, 3))
        await until(lambda: len(reserved_items(raw)) == 1, "move into the reserved list")
        proxy.down()
        proxy.unmute()
        with pytest.raises(ConnectionLost):
            await fetching
        assert len(reserved_items(raw)) == 1 and raw.llen("celery") == 0
        proxy.up()
        got = await transport.fetch(["celery"], 10, 5)
        assert [d.message.headers["id"] for d in got] == ["w-3"]
        assert reserved_items(raw) == []
        await transport.ack(got)
        assert await transport.fetch(["celery"], 10, 0.2) == []
        assert raw.exists("unacked", "unacked_index") == 0
    finally:
        proxy.unmute()
        proxy.up()
        await close(transport)


async def test_a_wait_cut_while_it_blocks_is_armed_again_on_a_new_connection(broker):
    """Every wait's connection breaks while nothing waits in the queue and the broker comes
    back at once: the same fetch waits again on every key, on new connections, and takes
    the message published later. Several rounds: the waits fail in whatever order, and one
    that fails while another is being armed must not be left unarmed."""
    raw, proxy, _ = broker
    transport = via(proxy)
    name = transport._kwargs["client_name"]
    steps = len(transport.priority_steps)

    def waits() -> set[int]:
        return {int(c["id"]) for c in raw.client_list()
                if c.get("name") == name and c.get("cmd") == "blmove"}

    try:
        assert await transport.fetch(["celery"], 10, 0.01) == []
        for n in range(5):
            fetching = asyncio.ensure_future(transport.fetch(["celery"], 10, 5))
            await blocked_in_wait(raw, transport)
            before = waits()
            proxy.down()
            proxy.up()
            await until(lambda: len(waits() - before) == steps, "every key waited on again",  # noqa: B023
                        timeout=2)
            assert not fetching.done()
            raw.lpush("celery", payload(transport, n))
            got = await fetching
            assert [d.message.headers["id"] for d in got] == [f"w-{n}"]
            await transport.ack(got)
        assert reserved_items(raw) == [] and raw.exists("unacked", "unacked_index") == 0
    finally:
        proxy.up()
        await close(transport)


def ids(deliveries) -> list[str]:
    return [d.message.headers["id"] for d in deliveries]


async def batch_reply_lost(raw: valkey.Valkey, proxy: FaultProxy, transport: RedisTransport,
                           then: str) -> asyncio.Future:
    """Publish w-0 to w-7, start a fetch of 5 with the server's replies dropped, and once
    its script reserved w-0 to w-4, reset every connection: ``then`` "reset" only, "down"
    and take the server away until ``up``, "cancel" the fetch first; the fetch."""
    assert await transport.fetch(["celery"], 10, 0) == []  # no blocking wait is armed
    raw.lpush("celery", *(payload(transport, n) for n in range(8)))
    proxy.mute()
    fetching = asyncio.ensure_future(transport.fetch(["celery"], 5, 0))
    await until(lambda: raw.hlen("unacked") == 5, "the script's reservation")
    if then == "cancel":
        fetching.cancel()
    proxy.down() if then == "down" else proxy.reset()
    proxy.unmute()
    return fetching


async def test_a_fetch_whose_reply_is_lost_gets_that_batch_on_its_retry(broker, caplog):
    """The fetch script ran (it reserved a batch in ``unacked``) and its reply was lost on
    the way: the retry, on a new connection, is handed that batch (the consumer's journal of
    its last fetch), and reserves nothing more; before, it reserved the next messages and
    left the batch in ``unacked`` for ``restore_visible`` (an hour by default)."""
    raw, proxy, _ = broker
    transport = via(proxy)
    try:
        fetching = await batch_reply_lost(raw, proxy, transport, "reset")
        with caplog.at_level(logging.WARNING, logger="celery.transport.redis"):
            got = await fetching
        assert ids(got) == [f"w-{n}" for n in range(5)]
        assert {t.decode() for t in raw.hkeys("unacked")} == {d.delivery_tag for d in got}
        assert raw.llen("celery") == 3 and caplog.text == ""
        rest = await transport.fetch(["celery"], 10, 0)
        assert ids(rest) == ["w-5", "w-6", "w-7"]
        await transport.ack(got + rest)
        assert raw.exists("unacked", "unacked_index") == 0
        assert await transport.fetch(["celery"], 10, 0) == []  # nothing handed twice
    finally:
        proxy.unmute()
        await close(transport)


@pytest.mark.parametrize("then", ["down", "cancel"])
async def test_a_batch_whose_reply_is_lost_comes_with_the_next_fetch(broker, then):
    """As above, but the retry cannot connect either (the broker is away), or the fetch was
    cancelled while it waited for the reply: the fetch fails, and the next one, the broker
    back, is handed the lost batch first, then what else it has room for, each message once;
    an entry gone from ``unacked`` meanwhile (acked, or given back by ``restore_visible``)
    is left out."""
    raw, proxy, _ = broker
    transport = via(proxy)
    try:
        fetching = await batch_reply_lost(raw, proxy, transport, then)
        with pytest.raises(ConnectionLost if then == "down" else asyncio.CancelledError):
            await fetching
        tags = {json.loads(v)[0]["headers"]["id"]: t for t, v in raw.hgetall("unacked").items()}
        raw.hdel("unacked", tags["w-2"])
        raw.zrem("unacked_index", tags["w-2"])
        proxy.up()
        got = await transport.fetch(["celery"], 10, 0)
        assert ids(got) == ["w-0", "w-1", "w-3", "w-4", "w-5", "w-6", "w-7"]
        assert raw.hlen("unacked") == 7 and raw.llen("celery") == 0
        await transport.ack(got)
        assert raw.exists("unacked", "unacked_index") == 0
        assert await transport.fetch(["celery"], 10, 0) == []
    finally:
        proxy.unmute()
        proxy.up()
        await close(transport)


async def test_the_record_of_a_handed_over_message_whose_reply_is_lost_is_not_redone(
        broker, caplog):
    """The CI failure of test_worker_recovers_when_broker_connections_are_dropped: a message
    a blocking wait took is handed over, its record (with the batch behind it) runs on the
    server, and the reply is lost when the connection is killed. The record's retry finds the
    message gone from the reserved list: it was taken for lost ("dead-lettered ... or
    restored") and the batch stayed in ``unacked``, undelivered. Now the retry is handed
    the batch, and nothing is logged."""
    raw, proxy, _ = broker
    transport = via(proxy)
    handed = []

    def early(delivery):
        handed.append(delivery)
        proxy.mute()  # the record's reply is lost
        return False

    try:
        assert await transport.fetch(["celery"], 10, 0.01) == []
        fetching = asyncio.ensure_future(transport.fetch(["celery"], 10, 5, early=early))
        await blocked_in_wait(raw, transport)
        raw.lpush("celery", *(payload(transport, n) for n in range(4)))
        await until(lambda: raw.hlen("unacked") == 4, "the record of the batch")
        proxy.reset()
        proxy.unmute()
        with caplog.at_level(logging.WARNING, logger="celery.transport.redis"):
            got = await fetching
        assert ids(handed) == ["w-0"] and ids(got) == ["w-1", "w-2", "w-3"]
        assert {t.decode() for t in raw.hkeys("unacked")} == {
            d.delivery_tag for d in handed + got}
        assert caplog.text == ""
        assert reserved_items(raw) == [] and raw.llen("celery") == 0
        await transport.ack(handed + got)
        assert raw.exists("unacked", "unacked_index") == 0
    finally:
        proxy.unmute()
        await close(transport)


#: Malformed ``unacked`` values, each with what is wrong.
MALFORMED = {
    "not-json": b"{{not json",
    "not-a-list": b'{"body": "x"}',
    "two-items": b'[{"body": "x"}, ""]',
    "envelope-not-an-object": b'["envelope", "", "celery"]',
    "exchange-not-a-string": b'[{"body": "x"}, 5, "celery"]',
    "too-deep": b"[" * 5000 + b"]" * 5000,
}


async def test_restore_dead_letters_malformed_unacked_entries_and_restores_the_rest(
        broker, caplog):
    """Expired ``unacked`` entries that are not ``[envelope, exchange, routing key]`` go to
    the dead-letter list unchanged, each logged; the good one goes back marked redelivered;
    an index entry whose hash entry is gone is dropped."""
    raw, _, url = broker
    transport = RedisTransport(url, transport_options={"visibility_timeout": 10})
    good = payload(transport, 5)
    old = time.time() - 100
    entries = {**MALFORMED, "good": f'[{good}, "", "celery"]'.encode()}
    for tag, value in entries.items():
        raw.hset("unacked", tag, value)
        raw.zadd("unacked_index", {tag: old})
    raw.zadd("unacked_index", {"orphan": old})
    raw.hset("unacked", "young", entries["good"])  # reserved just now: stays
    raw.zadd("unacked_index", {"young": time.time()})
    try:
        with caplog.at_level(logging.WARNING, logger="celery.transport.redis"):
            await transport.restore_visible()
        assert sorted(raw.lrange(DEAD_LETTER_KEY, 0, -1)) == sorted(MALFORMED.values())
        assert caplog.text.count("Malformed unacked entry") == len(MALFORMED)
        [back] = raw.lrange("celery", 0, -1)
        envelope = json.loads(back)
        assert envelope["headers"]["id"] == "w-5" and envelope["headers"]["redelivered"]
        assert raw.hkeys("unacked") == [b"young"]
        assert raw.zrange("unacked_index", 0, -1) == [b"young"]
        [got] = await transport.fetch(["celery"], 10, 1)
        assert got.message.headers["id"] == "w-5" and got.redelivered
        await transport.ack([got])
    finally:
        await close(transport)
