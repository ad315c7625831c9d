"""RedisTransport against a real Redis: kombu's key layout, batching, acks and recovery."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import threading
import time
import uuid
from pathlib import Path

import pytest
import valkey
from valkey.exceptions import ResponseError

from celery.exceptions import ConnectionLost, ImproperlyConfigured
from celery.messaging.protocol import Message, build_task_message
from celery.transport import base, redis_aio
from celery.transport.redis import DEAD_LETTER_KEY, RedisTransport
from celery.transport.registry import transport_for_url

from ..conftest import kill_clients_named

REDIS_DB = 2
SEP = "\x06\x16"
MESSAGES_JSON = Path(__file__).parent.parent / "compat" / "data" / "messages.json"

pytestmark = pytest.mark.redis


@pytest.fixture
def raw(redis_url: str):
    """A sync client on the test database, to look at keys directly."""
    client = valkey.Valkey.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def transport(redis_url: str):
    t = RedisTransport(redis_url)
    yield t
    await t.aclose()
    t.close()


def task(name: str = "proj.tasks.add", *args, **options) -> Message:
    return build_task_message(name, args, **options)


def unacked_tags(raw: valkey.Valkey) -> set[str]:
    return {t.decode() for t in raw.hkeys("unacked")}


async def test_satisfies_the_transport_protocol(transport):
    assert isinstance(transport, base.Transport)
    assert isinstance(transport_for_url("valkey://127.0.0.1:6379/2"), RedisTransport)
    assert base.CAP_PRIORITY in transport.capabilities


async def test_publish_then_fetch_preserves_body_headers_and_properties(transport):
    sent = task("proj.tasks.add", 2, 2, reply_to="reply-here")
    transport.publish(sent)
    [got] = await transport.fetch(["celery"], 10, 1)
    assert got.message.body == sent.body
    assert got.message.headers == sent.headers
    assert got.message.content_type == "application/json"
    assert got.message.content_encoding == "utf-8"
    assert got.message.properties["correlation_id"] == sent.headers["id"]
    assert got.message.properties["reply_to"] == "reply-here"
    assert got.message.routing_key == "celery"
    assert got.queue == "celery"
    assert got.redelivered is False
    assert got.delivery_info == {
        "exchange": "",
        "routing_key": "celery",
        "priority": 0,
        "redelivered": False,
    }


async def test_envelope_has_kombu_shape(transport, raw):
    sent = task("proj.tasks.add", 1, 1)
    await transport.apublish(sent)
    [item] = raw.lrange("celery", 0, -1)
    env = json.loads(item)
    assert list(env) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert list(env["properties"]) == [
        "correlation_id",
        "reply_to",
        "delivery_mode",
        "delivery_info",
        "priority",
        "body_encoding",
        "delivery_tag",
    ]
    assert env["properties"]["delivery_mode"] == 2
    assert env["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert env["properties"]["body_encoding"] == "base64"
    assert base64.b64decode(env["body"]) == sent.body
    assert item.decode().startswith('{"body": "')  # json.dumps defaults, as kombu


@pytest.mark.skipif(not MESSAGES_JSON.exists(), reason="no captured upstream messages")
async def test_upstream_messages_round_trip_byte_for_byte(transport, raw):
    """Fetch each captured upstream envelope, publish it again: only delivery_tag changes."""
    for case in json.loads(MESSAGES_JSON.read_text()):
        captured = base64.b64decode(case["raw_b64"])
        queue = json.loads(captured)["properties"]["delivery_info"]["routing_key"]
        raw.lpush(
            transport._key_for(queue, json.loads(captured)["properties"]["priority"]), captured
        )
        [got] = await transport.fetch([queue], 1, 0)
        await transport.ack([got])
        transport.publish(got.message)
        transport.confirm_published()  # pipelined: in Redis before the non-blocking fetch
        [again] = await transport.fetch([queue], 1, 0)
        original_tag = json.loads(captured)["properties"]["delivery_tag"]
        republished = again.raw.decode().replace(again.delivery_tag, original_tag)
        assert republished == captured.decode(), case["name"]
        await transport.ack([again])


async def test_fetch_returns_a_batch_of_at_most_max_count(transport):
    await transport.apublish_many([task("t", i) for i in range(7)])
    first = await transport.fetch(["celery"], 5, 1)
    assert [json.loads(d.message.body)[0] for d in first] == [[0], [1], [2], [3], [4]]
    assert await transport.queue_length("celery") == 2
    rest = await transport.fetch(["celery"], 5, 1)
    assert len(rest) == 2


async def test_fetch_blocks_up_to_timeout_then_returns_empty(transport):
    started = time.monotonic()
    assert await transport.fetch(["celery"], 10, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 2


async def test_fetch_wakes_when_messages_arrive_and_tops_up_the_batch(transport, raw):
    payloads = [transport.envelope_of(task("t", i))[1] for i in range(5)]

    def push_later():
        time.sleep(0.3)
        raw.lpush("celery", *payloads)  # one command: BRPOP wakes with the first of five

    thread = threading.Thread(target=push_later)
    started = time.monotonic()
    thread.start()
    got = await transport.fetch(["celery"], 10, 5)
    thread.join()
    assert time.monotonic() - started < 2
    assert [json.loads(d.message.body)[0] for d in got] == [[0], [1], [2], [3], [4]]
    assert unacked_tags(raw) == {d.delivery_tag for d in got}


async def test_reserved_messages_are_in_unacked_until_acked(transport, raw):
    await transport.apublish_many([task("t", i) for i in range(3)])
    got = await transport.fetch(["celery"], 10, 1)
    tags = {d.delivery_tag for d in got}
    assert unacked_tags(raw) == tags
    assert {t.decode() for t in raw.zrange("unacked_index", 0, -1)} == tags
    stored = raw.hget("unacked", got[0].delivery_tag)
    assert stored.startswith(b'[{"body": ') and stored.endswith(b'}, "", "celery"]')
    envelope, exchange, routing_key = json.loads(stored)
    assert (exchange, routing_key) == ("", "celery")
    assert envelope["properties"]["delivery_tag"] == got[0].delivery_tag
    assert abs(raw.zscore("unacked_index", got[0].delivery_tag) - time.time()) < 5
    await transport.ack(got)
    assert raw.exists("unacked", "unacked_index") == 0


async def test_requeue_puts_messages_first_in_line_marked_redelivered(transport, raw):
    await transport.apublish_many([task("t", i) for i in range(4)])
    got = await transport.fetch(["celery"], 2, 1)
    await transport.requeue(got)
    assert unacked_tags(raw) == set()
    again = await transport.fetch(["celery"], 10, 1)
    assert [json.loads(d.message.body)[0] for d in again] == [[0], [1], [2], [3]]
    assert [d.redelivered for d in again] == [True, True, False, False]
    assert again[0].message.headers["redelivered"] is True
    assert again[0].delivery_tag == got[0].delivery_tag


async def test_reject_with_requeue_goes_to_the_back(transport):
    await transport.apublish_many([task("t", i) for i in range(2)])
    first = await transport.fetch(["celery"], 1, 1)
    await transport.reject(first, requeue=True)
    again = await transport.fetch(["celery"], 10, 1)
    assert [json.loads(d.message.body)[0] for d in again] == [[1], [0]]
    assert again[1].redelivered


async def test_reject_without_requeue_dead_letters_it(transport, raw, caplog):
    transport.publish(task("t"))
    got = await transport.fetch(["celery"], 1, 1)
    with caplog.at_level(logging.INFO, logger="celery.transport.redis"):
        await transport.reject(got, requeue=False)
    assert got[0].delivery_tag in caplog.text
    assert raw.exists("unacked", "celery") == 0
    assert raw.lrange(DEAD_LETTER_KEY, 0, -1) == [got[0].raw]  # unchanged, once


async def test_restore_visible_restores_only_expired_reservations(redis_url, raw):
    transport = RedisTransport(redis_url, transport_options={"visibility_timeout": 60})
    await transport.apublish_many([task("t", i) for i in range(3)])
    old = await transport.fetch(["celery"], 2, 1)
    # Reserved 61 s earlier, in their order (no sleep: a loaded machine would let the young
    # one expire too).
    for d in old:
        raw.zincrby("unacked_index", -61, d.delivery_tag)
    young = await transport.fetch(["celery"], 1, 1)
    assert await transport.restore_visible() == 2
    assert unacked_tags(raw) == {young[0].delivery_tag}
    assert raw.exists("unacked_mutex") == 0
    again = await transport.fetch(["celery"], 10, 1)
    assert [d.delivery_tag for d in again] == [d.delivery_tag for d in old]  # order kept
    assert all(d.redelivered for d in again)
    await transport.aclose()


async def test_restore_visible_skips_while_another_holds_the_mutex(redis_url, raw):
    transport = RedisTransport(redis_url, transport_options={"visibility_timeout": 0.01})
    transport.publish(task("t"))
    await transport.fetch(["celery"], 1, 1)
    await asyncio.sleep(0.05)
    raw.set("unacked_mutex", "someone-else", px=5000)
    assert await transport.restore_visible() == 0
    raw.delete("unacked_mutex")
    assert await transport.restore_visible() == 1
    await transport.aclose()


async def test_restore_visible_routes_through_a_bound_exchange(redis_url, raw):
    """An entry reserved by a kombu consumer with a named exchange goes to the bound queue."""
    transport = RedisTransport(redis_url, transport_options={"visibility_timeout": 0})
    envelope = json.loads(transport.envelope_of(task("t", priority=6))[1])
    tag = envelope["properties"]["delivery_tag"]
    raw.sadd("_kombu.binding.jobs", f"urgent{SEP}{SEP}target")
    raw.hset("unacked", tag, json.dumps([envelope, "jobs", "urgent"]))
    raw.zadd("unacked_index", {tag: time.time() - 10})
    assert await transport.restore_visible() == 1
    assert raw.llen(f"target{SEP}6") == 1
    [got] = await transport.fetch(["target"], 1, 0)
    assert got.redelivered and got.delivery_tag == tag
    await transport.aclose()


async def test_high_priority_message_overtakes_a_backlog(transport, raw):
    await transport.apublish_many([task("low", i, priority=9) for i in range(5)])
    await transport.apublish(task("high", priority=0))
    await transport.apublish(task("mid", priority=5))
    assert raw.llen(f"celery{SEP}9") == 5
    assert raw.llen(f"celery{SEP}3") == 1
    assert raw.llen("celery") == 1
    assert await transport.queue_length("celery") == 7
    got = await transport.fetch(["celery"], 3, 1)
    assert [d.message.headers["task"] for d in got] == ["high", "mid", "low"]
    assert got[1].delivery_info["priority"] == 5


async def test_priority_steps_match_kombu_bisect(transport):
    expected = {0: "", 2: "", 3: "3", 5: "3", 6: "6", 8: "6", 9: "9", 42: "9", -1: "", None: ""}
    for priority, step in expected.items():
        assert transport._key_for("q", priority) == ("q" + SEP + step if step else "q")


async def test_queues_are_read_in_the_given_order(transport):
    transport.publish(task("a", queue="a"))
    transport.publish(task("b", queue="b"))
    got = await transport.fetch(["b", "a"], 10, 1)
    assert [d.queue for d in got] == ["b", "a"]


async def test_round_robin_strategy_rotates_the_first_queue(redis_url):
    t = RedisTransport(redis_url, transport_options={"queue_order_strategy": "round_robin"})
    for _ in range(2):
        t.publish(task("a", queue="a"))
        t.publish(task("b", queue="b"))
    firsts = [(await t.fetch(["a", "b"], 1, 1))[0].queue for _ in range(4)]
    assert sorted(firsts) == ["a", "a", "b", "b"]
    assert firsts[0] != firsts[1]
    await t.aclose()
    t.close()


def test_bad_transport_options_raise_improperly_configured():
    with pytest.raises(ImproperlyConfigured, match="queue_order_strategy"):
        RedisTransport("redis://", transport_options={"queue_order_strategy": "random"})
    with pytest.raises(ImproperlyConfigured, match="priority_steps"):
        RedisTransport("redis://", transport_options={"priority_steps": [3, 1]})


async def test_declare_writes_kombu_bindings(transport, raw):
    await transport.declare(["celery", "other"])
    assert set(raw.smembers("_kombu.binding.celery")) == {f"celery{SEP}{SEP}celery".encode()}
    assert set(raw.smembers("_kombu.binding_permanent.other")) == {f"other{SEP}{SEP}other".encode()}


async def test_global_keyprefix_prefixes_every_key(redis_url, raw):
    transport = RedisTransport(redis_url, transport_options={"global_keyprefix": "app:"})
    await transport.declare(["celery"])
    transport.publish(task("t", priority=9))
    got = await transport.fetch(["celery"], 1, 1)
    keys = sorted(raw.keys())
    # The consumer's fetch journal (redis_scripts.FETCH), deleted when the transport closes.
    journal = [k for k in keys if k.startswith(b"app:celery-asyncio.fetched.")]
    assert len(journal) == 1 and [k for k in keys if k not in journal] == [
        b"app:_kombu.binding.celery",
        b"app:_kombu.binding_permanent.celery",
        b"app:unacked",
        b"app:unacked_index",
    ]
    await transport.ack(got)
    await transport.aclose()
    assert not raw.exists(*journal)


async def test_malformed_elements_are_dead_lettered_and_good_ones_delivered(transport, raw, caplog):
    transport.publish(task("good", 1))
    raw.lpush("celery", b"\xff\x00 not json")
    raw.lpush("celery", json.dumps({"properties": {"delivery_tag": "x"}}))
    raw.lpush(
        "celery",
        json.dumps({"body": "%%%", "properties": {"body_encoding": "base64", "delivery_tag": "b"}}),
    )
    transport.publish(task("good", 2))
    with caplog.at_level(logging.WARNING, logger="celery.transport.redis"):
        got = await transport.fetch(["celery"], 10, 1)
    assert [json.loads(d.message.body)[0] for d in got] == [[1], [2]]
    assert raw.llen(DEAD_LETTER_KEY) == 3
    assert caplog.text.count("Malformed message in Redis queue 'celery'") == 3
    assert unacked_tags(raw) == {d.delivery_tag for d in got}


async def test_only_malformed_waiting_returns_empty_without_crashing(transport, raw):
    raw.lpush("celery", b"garbage")
    assert await transport.fetch(["celery"], 10, 0.1) == []
    assert raw.lrange(DEAD_LETTER_KEY, 0, -1) == [b"garbage"]


async def test_publish_from_many_threads_loses_nothing(transport):
    def publish_many(n: int) -> None:
        for i in range(200):
            transport.publish(task("t", n, i))

    threads = [threading.Thread(target=publish_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert await transport.queue_length("celery") == 1600
    seen = set()
    while batch := await transport.fetch(["celery"], 500, 0):
        seen.update(tuple(json.loads(d.message.body)[0]) for d in batch)
        await transport.ack(batch)
    assert len(seen) == 1600


async def test_purge_counts_all_priority_sub_queues(transport):
    await transport.apublish_many([task("t", priority=p) for p in (0, 0, 4, 9)])
    assert await transport.purge("celery") == 4
    assert await transport.queue_length("celery") == 0
    assert await transport.purge("celery") == 0


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:6379/abc", "amqp://x/0", ""]
)
def test_bad_url_raises_improperly_configured(url):
    with pytest.raises(ImproperlyConfigured):
        RedisTransport(url)


def test_url_parts_and_tls_are_understood():
    t = RedisTransport("valkeys://user:s3cret@example.com:6380/?db=4")
    assert t._tls
    expected = {"host": "example.com", "port": 6380, "db": 4, "password": "s3cret"}
    assert t._kwargs.items() >= expected.items()
    assert t._kwargs["username"] == "user"
    assert "s3cret" not in repr(t)


async def test_unreachable_server_raises_connection_lost_quickly():
    t = RedisTransport("redis://127.0.0.1:1/0", transport_options={"max_retries": 1})
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="127.0.0.1:1"):
        await t.fetch(["celery"], 1, 1)
    with pytest.raises(ConnectionLost):
        t.publish(task("t"))
    with pytest.raises(ConnectionLost):
        await t.ping()
    assert time.monotonic() - started < 5
    await t.aclose()
    t.close()


async def test_recovers_after_server_kills_all_connections(redis_url, raw):
    name = f"ttest-{uuid.uuid4().hex[:8]}"  # only this transport's connections are killed
    transport = RedisTransport(redis_url, transport_options={"client_name": name})
    transport.publish(task("t", 1))
    transport.confirm_published()
    await transport.ping()
    assert await transport.fetch(["celery"], 1, 0)
    assert kill_clients_named(raw, name) >= 2  # the sync and the async client
    transport.publish(task("t", 2))
    got = await transport.fetch(["celery"], 1, 1)
    assert [json.loads(d.message.body)[0] for d in got] == [[2]]
    await transport.ack(got)
    await transport.aclose()
    transport.close()


async def test_fetch_on_several_event_loops_uses_a_client_per_loop(transport):
    transport.publish(task("t"))

    def fetch_in_new_loop():
        return asyncio.run(transport.fetch(["celery"], 1, 1))

    got = await asyncio.to_thread(fetch_in_new_loop)
    assert len(got) == 1
    await transport.ping()


async def test_concurrent_publishes_are_coalesced_and_keep_their_order(transport, raw):
    # 300 apublish calls awaited together, alternating between two queues: sent in few
    # pipelines, yet each queue holds its messages in call order.
    messages = [dataclasses.replace(task("proj.tasks.add", i), routing_key="qa" if i % 3 else "qb")
                for i in range(300)]
    calls_before = raw.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
    await asyncio.gather(*(transport.apublish(m) for m in messages))
    calls = raw.info("commandstats")["cmdstat_lpush"]["calls"] - calls_before
    assert calls < 300  # coalesced: multi-value LPUSHes
    for queue, wanted in (("qa", [i for i in range(300) if i % 3]),
                          ("qb", [i for i in range(300) if not i % 3])):
        got = []
        while batch := await transport.fetch([queue], 100, 0.1):
            got += [json.loads(d.message.body)[0][0] for d in batch]
            await transport.ack(batch)
        assert got == wanted


async def test_a_failed_coalesced_publish_fails_every_caller():
    dead = RedisTransport("redis://127.0.0.1:1/0", transport_options={"max_retries": 0})
    results = await asyncio.gather(*(dead.apublish(task()) for _ in range(5)),
                                   return_exceptions=True)
    assert len(results) == 5 and all(isinstance(r, ConnectionLost) for r in results)
    await dead.aclose()


# -- early hand-off (CAP_EARLY): a message the blocking wait took goes to ``early`` before its
# record. The wait is BLMOVE into this consumer's reserved list of the key (redis_reserved.py):
# the message is reserved from the moment it leaves the queue.


def reserved_lists(raw) -> dict[bytes, list[bytes]]:
    """Every consumer's reserved list that holds something."""
    return {k: raw.lrange(k, 0, -1) for k in raw.keys("celery-asyncio.reserved.*")}


async def no_reserved_lists(raw) -> bool:
    """True once no reserved list holds anything (the LREM of a message acked on the spot
    goes out with the next wait, or within redis_reserved.FORGET_WITHIN)."""
    for _ in range(100):
        if not reserved_lists(raw):
            return True
        await asyncio.sleep(0.01)
    return False


def bodies(deliveries) -> list:
    return [json.loads(d.message.body)[0] for d in deliveries]


def blocked_waits(raw) -> set[int]:
    """Ids of the clients of this database blocked in a blocking move (fetch waits)."""
    db = raw.connection_pool.connection_kwargs.get("db", 0)
    return {int(c["id"]) for c in raw.client_list()
            if c.get("cmd") in ("blmove", "brpoplpush") and "b" in c.get("flags", "")
            and int(c.get("db", -1)) == db}


def until_a_wait_blocks(raw, timeout: float = 10, stale: frozenset[int] = frozenset()) -> None:
    """Return once a client of this database other than ``stale`` is blocked in a blocking
    move (a fetch's wait armed on the server): pushing earlier, the fetch's script would find
    the message itself (a fixed 0.3 s was not always enough on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not blocked_waits(raw) - stale:
        assert time.monotonic() < deadline, "no fetch wait blocked in Redis"
        time.sleep(0.005)


async def fetch_while_pushing(transport, raw, payloads, early, max_count=10):
    """Fetch with ``early`` while the queue is empty, so the wait blocks; push ``payloads``
    in one LPUSH once it does: the wait wakes with the first of them. A wait still blocked
    from before (an earlier fetch's, on the free-threaded build once) would take the push
    first, Redis serving the oldest waiter: its end (the fetch timeout, 5 s) is waited for."""
    deadline = time.monotonic() + 10
    while blocked_waits(raw):
        assert time.monotonic() < deadline, f"waits still blocked: {blocked_waits(raw)}"
        time.sleep(0.01)
    thread = threading.Thread(target=lambda: (until_a_wait_blocks(raw),
                                              raw.lpush("celery", *payloads)))
    thread.start()
    try:
        return await transport.fetch(["celery"], max_count, 5, early=early)
    finally:
        thread.join()


def refuse_hand_over(delivery):
    raise AssertionError(f"handed over early: {delivery.delivery_tag}")


async def test_a_message_settled_when_handed_over_is_never_recorded(transport, raw):
    assert base.CAP_EARLY in transport.capabilities
    payloads = [transport.envelope_of(task("t", i))[1] for i in range(3)]
    handed = []
    got = await fetch_while_pushing(transport, raw, payloads, lambda d: handed.append(d) or True)
    assert bodies(handed) == [[0]]
    assert handed[0].delivery_tag == json.loads(payloads[0])["properties"]["delivery_tag"]
    # Acked on the spot, the first is never recorded and leaves its reserved list; the
    # wait's LLEN says two more wait behind it: they are reserved as one batch at once.
    assert bodies(got) == [[1], [2]]
    assert unacked_tags(raw) == {d.delivery_tag for d in got}
    assert await no_reserved_lists(raw)


async def test_a_lone_message_settled_when_handed_over_costs_one_command(transport, raw,
                                                                        monkeypatch):
    """Taken alone for an otherwise idle consumer (EARLY_ALONE): no script runs after the
    wait, nor in the next fetch before its wait (only the first fetch reserves first,
    knowing nothing yet); the LREM that takes it out of its list is written with the next
    wait. A busy consumer (EARLY_ACKED) has the next fetch reserve first, to batch what came
    meanwhile."""
    reserves = []
    reserve = transport._reserve

    async def counted(*args):
        reserves.append(args)
        return await reserve(*args)

    monkeypatch.setattr(transport, "_reserve", counted)
    handed = []

    def alone(delivery):
        handed.append(delivery)
        return base.EARLY_ALONE

    def busy(delivery):
        handed.append(delivery)
        return base.EARLY_ACKED

    payloads = [transport.envelope_of(task("t", i))[1] for i in range(3)]
    got = await fetch_while_pushing(transport, raw, payloads[:1], alone)
    assert got == [] and bodies(handed) == [[0]] and len(reserves) == 1
    reserves.clear()
    got = await fetch_while_pushing(transport, raw, payloads[1:2], busy)
    assert got == [] and bodies(handed) == [[0], [1]] and reserves == []
    got = await fetch_while_pushing(transport, raw, payloads[2:], alone)
    assert got == [] and bodies(handed) == [[0], [1], [2]] and len(reserves) == 1
    assert reserves[0][2:] == ()  # the script ran first, with no moved message, and found none
    assert raw.exists("unacked", "unacked_index") == 0 and await no_reserved_lists(raw)


async def test_blocking_waits_keep_a_connection_each_and_replace_a_killed_one(
        redis_url, raw, caplog):
    """One blocking wait per queue key (the priority sub-queues), each on a connection kept
    between fetches (redis_aio.Popper); one the server closed is replaced before that key is
    waited on again, and the message still comes, once; aclose closes them all."""
    caplog.set_level(logging.DEBUG, logger="celery.transport.redis")  # why a wait failed
    name = f"ttest-{uuid.uuid4().hex[:8]}"  # only this transport's connections are counted
    transport = RedisTransport(redis_url, transport_options={"client_name": name})
    keys = len(transport.priority_steps)

    def waits() -> list[int]:  # (an LLEN follows each wait)
        return [int(c["id"]) for c in raw.client_list()
                if c.get("name") == name and c.get("cmd") in ("blmove", "llen")]

    try:
        for _ in range(3):  # the queue is empty: each fetch ends with waits that time out
            assert await transport.fetch(["celery"], 10, 0.05, early=refuse_hand_over) == []
        first = waits()
        assert len(first) == keys
        assert await transport.fetch(["celery"], 10, 0.05, early=refuse_hand_over) == []
        assert sorted(waits()) == sorted(first)
        assert kill_clients_named(raw, name) >= keys
        handed = []
        early = lambda d: handed.append(d) or True  # noqa: E731
        try:
            got = await fetch_while_pushing(
                transport, raw, [transport.envelope_of(task("t", 7))[1]], early)
        except ConnectionLost:
            # A wait that breaks again within the same fetch ends it with ConnectionLost (the
            # consumer backs off, then fetches again). Seen once, in the free-threaded CI pass
            # on a loaded machine; what the wait had taken went back to the queue first.
            got = await transport.fetch(["celery"], 10, 5, early=early)
        assert bodies(handed) == [[7]] and got == []
        # Every key waited on once more: a broken wait is replaced when its key is waited on
        # again, and the fetch that got the message may have returned before all were (the
        # ConnectionLost branch above, seen to leave 2 of 4 in the free-threaded CI pass).
        assert await transport.fetch(["celery"], 10, 0.05, early=refuse_hand_over) == []
        again = waits()
        assert len(again) == keys and not set(again) & set(first)
    finally:
        await transport.aclose()
        transport.close()
    deadline = time.monotonic() + 5
    while waits() and time.monotonic() < deadline:  # the server sees the close shortly
        await asyncio.sleep(0.01)
    assert waits() == []


async def wait_cancelled_then_push(transport, raw, n: int) -> None:
    """Cancel a fetch while its waits block, then push message ``n``: a wait left armed
    takes it into this consumer's reserved list."""
    fetching = asyncio.create_task(transport.fetch(["celery"], 10, 3, early=refuse_hand_over))
    await asyncio.to_thread(until_a_wait_blocks, raw)
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching
    raw.lpush("celery", transport.envelope_of(task("t", n))[1])
    deadline = time.monotonic() + 5
    while not reserved_lists(raw) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert raw.llen("celery") == 0 and len(reserved_lists(raw)) == 1  # taken, reserved


async def test_a_message_a_wait_takes_after_its_fetch_is_cancelled_is_not_lost(redis_url, raw):
    """A fetch cancelled while it waits (a shutdown) leaves the waits armed in Redis: one
    that then takes a message moves it into this consumer's reserved list, where the next
    fetch finds it, or aclose gives it back to the queue."""
    name = f"ttest-{uuid.uuid4().hex[:8]}"
    transport = RedisTransport(redis_url, transport_options={"client_name": name})
    try:
        await wait_cancelled_then_push(transport, raw, 5)
        handed = []  # (handed over early if the wait's reply is read during this fetch)
        got = await transport.fetch(["celery"], 10, 1, early=lambda d: handed.append(d) or False)
        assert bodies(handed + got) == [[5]] and await no_reserved_lists(raw)
        await transport.ack(handed + got)
        # and one taken after the last fetch goes back to the queue when the transport closes
        await wait_cancelled_then_push(transport, raw, 6)
    finally:
        await transport.aclose()
        transport.close()
    assert reserved_lists(raw) == {}
    back = raw.lrange("celery", 0, -1)
    assert [json.loads(base64.b64decode(json.loads(p)["body"]))[0] for p in back] == [[6]]


async def test_a_server_without_blmove_gets_brpoplpush(transport, raw, monkeypatch):
    """Redis older than 6.2 answers BLMOVE with "unknown command": the transport says so
    once and waits with BRPOPLPUSH (the same ends) from then on."""
    real = redis_aio.Popper.call  # what sends the blocking waits
    sent = []

    async def old_server(self, args, *then):
        sent.append(args[0])
        if args[0] == "BLMOVE":
            raise ResponseError("unknown command 'BLMOVE', with args beginning with: ")
        return await real(self, args, *then)

    monkeypatch.setattr(redis_aio.Popper, "call", old_server)
    payloads = [transport.envelope_of(task("t", i))[1] for i in range(2)]
    handed = []
    got = await fetch_while_pushing(transport, raw, payloads, lambda d: handed.append(d) or True)
    assert bodies(handed) == [[0]] and bodies(got) == [[1]]  # (the backlog, with it)
    assert "BRPOPLPUSH" in sent and sent.count("BLMOVE") >= 1
    await transport.ack(got)
    blmoves = sent.count("BLMOVE")
    got = await fetch_while_pushing(transport, raw, [payloads[0]], lambda d: handed.append(d) or True)
    assert sent.count("BLMOVE") == blmoves  # remembered
    assert raw.exists("unacked", "unacked_index") == 0 and await no_reserved_lists(raw)


async def test_a_message_not_settled_when_handed_over_is_recorded_with_the_batch(transport, raw):
    payloads = [transport.envelope_of(task("t", i))[1] for i in range(3)]
    handed = []
    got = await fetch_while_pushing(transport, raw, payloads, lambda d: handed.append(d) or False)
    assert bodies(handed) == [[0]] and bodies(got) == [[1], [2]]  # not handed out twice
    assert unacked_tags(raw) == {d.delivery_tag for d in handed + got}
    await transport.ack(handed + got)
    assert raw.exists("unacked", "unacked_index") == 0


@pytest.mark.parametrize("settle", ["ack", "requeue"])
async def test_settling_a_handed_over_message_waits_for_its_record(transport, raw, monkeypatch,
                                                                    settle):
    reserve = transport._reserve

    async def slow_reserve(*args):
        await asyncio.sleep(0.2)  # without the wait, the settle below would overtake the record
        return await reserve(*args)

    monkeypatch.setattr(transport, "_reserve", slow_reserve)
    settling = []

    def early(delivery):
        settling.append(asyncio.ensure_future(getattr(transport, settle)([delivery])))
        return False

    payload = transport.envelope_of(task("t", 7))[1]
    assert await fetch_while_pushing(transport, raw, [payload], early) == []
    await asyncio.gather(*settling)
    assert raw.exists("unacked", "unacked_index") == 0  # settled after it was recorded
    assert raw.llen("celery") == (1 if settle == "requeue" else 0)


async def test_a_failing_early_handler_leaves_the_message_reserved(transport, raw):
    def early(delivery):
        raise RuntimeError("bug in the handler")

    payloads = [transport.envelope_of(task("t", i))[1] for i in range(3)]
    with pytest.raises(RuntimeError, match="bug in the handler"):
        await fetch_while_pushing(transport, raw, payloads, early)
    taken = payloads[:1]  # the wait took one
    assert unacked_tags(raw) == {json.loads(p)["properties"]["delivery_tag"] for p in taken}
    assert raw.llen("celery") == 2 and await no_reserved_lists(raw)


async def test_a_malformed_popped_message_is_not_handed_over(transport, raw, caplog):
    bad = json.dumps({"body": "%%%", "properties": {"body_encoding": "base64", "delivery_tag": "b"}})
    with caplog.at_level(logging.WARNING, logger="celery.transport.redis"):
        assert await fetch_while_pushing(transport, raw, [bad], refuse_hand_over) == []
    assert raw.lrange(DEAD_LETTER_KEY, 0, -1) == [bad.encode()]
    assert "Malformed message in Redis queue 'celery'" in caplog.text
    assert raw.exists("unacked", "unacked_index") == 0


@pytest.mark.parametrize("journal", [b"{{not json", b'{"a": 1}', b'["9", 1, "t", "x"]',
                                     b'["9", 1, "missing-tag", 10]'])
async def test_a_claim_on_a_journal_that_does_not_hold_it_hands_over_nothing_twice(
        transport, raw, journal):
    """The fetch journal (redis_scripts.FETCH) unreadable, of another shape, with a length
    that is not a number, or naming a tag no longer in ``unacked``: a fetch claiming it
    reserves as usual, and hands over nothing it did not reserve."""
    transport.publish(task("t", 1))
    assert [d.message.headers["task"] for d in await transport.fetch(["celery"], 10, 0)] == ["t"]
    waiters = transport._waiters_here()
    raw.set(waiters.journal_key, journal)
    waiters.settle_claims([], ["9"])  # as if fetch "9" had lost its reply
    transport.publish(task("u", 2))
    got = await transport.fetch(["celery"], 10, 0)
    assert [d.message.headers["task"] for d in got] == ["u"]
    assert waiters.claims() == []  # resolved by a reply


async def test_a_claimed_batch_keeps_its_queue_when_the_next_fetch_reads_other_queues(
        transport, raw):
    """The claimed run read queue "a"; the next fetch reads "b" then "a" (a queue was added
    meanwhile), and gets a's message first, under "a"; one that reads "b" only leaves it in
    ``unacked`` (for the restore) and hands over nothing it did not reserve."""
    waiters = transport._waiters_here()
    for queues in (["b", "a"], ["b"]):
        transport.publish(task("in-a", queue="a"))
        transport.publish(task("in-b", queue="b"))
        [lost] = await transport.fetch(["a"], 10, 0)
        waiters.settle_claims([], [str(waiters._tokens)])  # as if its reply had been lost
        got = await transport.fetch(queues, 10, 0)
        expected = [("a", "in-a"), ("b", "in-b")] if "a" in queues else [("b", "in-b")]
        assert [(d.queue, d.message.headers["task"]) for d in got] == expected
        assert waiters.claims() == []
        await transport.ack([lost, *got])
    assert raw.exists("unacked", "unacked_index") == 0
