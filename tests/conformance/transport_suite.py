"""The behaviour every transport must have. Each transport's test class subclasses
``TransportSuite`` and says how to make a fresh broker and how to plant a malformed element.

Only the ``Transport`` protocol (transport/base.py) is used here, through
``transport_for_url``, so a transport passes by behaving, not by its internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from celery.messaging.protocol import Message, build_task_message, decode_body
from celery.transport.base import CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT, Delivery, Transport
from celery.transport.registry import transport_for_url

ROOT = Path(__file__).resolve().parents[2]
#: Short, so that the visibility-timeout tests are quick.
VISIBILITY = 0.5


def _nested(depth: int, tag: str) -> bytes:
    """An envelope whose headers hold a list nested ``depth`` levels deep."""
    env = json.dumps({"body": "", "content-type": "application/json", "headers": {"x": "@"},
                      "properties": {"body_encoding": "base64", "delivery_tag": tag}})
    return env.replace('"@"', "[" * depth + "]" * depth).encode()


#: Elements that are not messages, each dead-lettered once by every transport: Python's
#: JSON parser raises RecursionError near a depth of 1,000 (issue 20), Redis's cjson refuses
#: 1,000 and more itself.
MALFORMED = (
    b"not json at all",
    b'{"json": "but not an envelope"}',
    b'{"body": "%%%", "properties": {"body_encoding": "base64", "delivery_tag": "t-bad"},'
    b' "headers": {}}',
    b'["a JSON list"]',
    b'{"body": "", "properties": {"delivery_tag": "t-h"}, "headers": ["not", "a", "map"]}',
    _nested(990, "t-deep"),
    _nested(20_000, "t-deeper"),
)


def task(arg: Any, queue: str = "celery", priority: int | None = None) -> Message:
    return build_task_message("conformance.t", (arg,), queue=queue, priority=priority)


def arg_of(delivery: Delivery) -> Any:
    m = delivery.message
    return decode_body(m.body, m.content_type, m.content_encoding, frozenset({"application/json"})).args[0]


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.conformance.child", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )


async def drain(transport: Transport, queues: list[str], expected: int,
                timeout: float = 10.0) -> list[Delivery]:
    """Fetch until ``expected`` deliveries came (or about ``timeout`` seconds), acking nothing.

    Bounded by a number of fetches rather than by the clock: on a VM whose clock jumps (a
    paused guest), a deadline could pass while the broker still had the messages.
    """
    got: list[Delivery] = []
    # Short waits, many rounds: a broker that pushes (AMQP) hands over what has arrived so
    # far, a few messages per fetch on a loaded machine.
    for _ in range(max(1, int(timeout / 0.1))):
        if len(got) >= expected:
            break
        got += await transport.fetch(queues, expected - len(got), 0.1)
    return got


async def sleep_until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``moment``."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def restore_expired(transport: Transport, want: int, reserved_since: float,
                          timeout: float = 30.0) -> int:
    """Restore reservations made after ``reserved_since`` (``time.monotonic()`` taken before
    they were made) once their visibility timeout has passed: ``restore_visible`` again and
    again, adding up, until ``want`` came back or ``timeout`` seconds passed; the total.
    Waiting on the count, not on a margin after the timeout, keeps a loaded machine (or a
    transport whose clock is the server's) from failing the test."""
    await sleep_until(reserved_since + VISIBILITY)
    deadline = time.monotonic() + timeout
    total = await transport.restore_visible()
    while total < want and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        total += await transport.restore_visible()
    return total


async def nothing_restored_after_expiry(transport: Transport, reserved_since: float) -> int:
    """``restore_visible`` once the reservations made after ``reserved_since`` would have
    expired (with a margin): what a transport that forgot an ack or a dead-lettering would
    give back. 0 at once for a transport without a visibility timeout."""
    if CAP_VISIBILITY_TIMEOUT in transport.capabilities:
        await sleep_until(reserved_since + VISIBILITY + 0.3)
    return await transport.restore_visible()


class TransportSuite:
    """Subclasses define ``make_url`` and ``plant_malformed``; may turn ``multiprocess`` off."""

    #: False for in-process brokers (memory://): the cross-process tests don't apply.
    multiprocess = True
    #: False where the broker keeps messages as frames, not kombu JSON envelopes (AMQP):
    #: nothing malformed can be planted below the transport's decoder.
    envelopes = True
    #: Where ``reject(requeue=True)`` puts a message: the back of its queue (kombu's virtual
    #: transports) or its old place at the front (AMQP: RabbitMQ requeues in place).
    requeue_to_back = True
    #: Whether a message given back comes again before the ones behind it. RabbitMQ puts it
    #: back in place but promises no order against messages it delivers meanwhile (a
    #: larger prefetch lets them overtake it: seen in CI), so AMQP says False: then only
    #: that every message comes again once, the given-back one marked redelivered, is
    #: checked.
    requeue_keeps_order = True

    def make_url(self, tmp_path: Path) -> str:
        """URL of a fresh, empty broker."""
        raise NotImplementedError

    def plant_malformed(self, url: str, queue: str, raw: bytes) -> None:
        """Put ``raw`` into ``queue`` as one element, bypassing the transport's encoder."""
        raise NotImplementedError

    def dead_letters(self, url: str) -> list[bytes]:
        """The raw elements in the broker's dead-letter store, oldest first."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"visibility_timeout": VISIBILITY}

    # -- fixtures ---------------------------------------------------------------------------

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return self.make_url(tmp_path)

    @pytest.fixture
    async def transport(self, url: str):
        t = transport_for_url(url, transport_options=self.options())
        await t.declare(["celery", "other"])
        yield t
        await t.aclose()
        t.close()

    def other(self, url: str) -> Transport:
        """A second client on the same broker (another connection / file handle)."""
        return transport_for_url(url, transport_options=self.options())

    def need_processes(self) -> None:
        if not self.multiprocess:
            pytest.skip("in-process broker: other processes cannot reach it")

    # -- publish / fetch / ack ----------------------------------------------------------------

    async def test_is_a_transport(self, transport):
        assert isinstance(transport, Transport)
        await transport.ping()

    async def test_round_trip_keeps_body_headers_and_properties(self, transport):
        sent = build_task_message("conformance.t", (1, "ü", None), {"k": [1, 2]}, reply_to="r-1")
        await transport.apublish(sent)
        [got] = await transport.fetch(["celery"], 10, 1.0)
        assert got.message.body == sent.body
        assert got.message.headers == sent.headers
        assert got.message.content_type == sent.content_type == "application/json"
        assert got.message.content_encoding == "utf-8"
        assert got.message.properties["correlation_id"] == sent.headers["id"]
        assert got.message.properties["reply_to"] == "r-1"
        assert got.queue == "celery" and got.redelivered is False
        assert got.delivery_info["routing_key"] == "celery"
        await transport.ack([got])
        assert await transport.fetch(["celery"], 10, 0.1) == []
        assert await transport.queue_length("celery") == 0

    async def test_sync_publish_and_large_message(self, transport):
        big = "x" * (1 << 20)
        transport.publish(task(big))
        [got] = await transport.fetch(["celery"], 1, 1.0)
        assert arg_of(got) == big
        await transport.ack([got])

    async def test_fifo_within_a_queue_and_max_count(self, transport):
        await transport.apublish_many([task(i) for i in range(10)])
        assert await transport.queue_length("celery") == 10
        first = await transport.fetch(["celery"], 3, 1.0)
        assert [arg_of(d) for d in first] == [0, 1, 2]
        assert await transport.queue_length("celery") == 7
        rest = await drain(transport, ["celery"], 7)
        assert [arg_of(d) for d in rest] == list(range(3, 10)), [arg_of(d) for d in rest]
        assert len({d.delivery_tag for d in first + rest}) == 10
        await transport.ack(first + rest)

    async def test_fetch_waits_then_returns_empty(self, transport):
        started = time.monotonic()
        assert await transport.fetch(["celery"], 5, 0.3) == []
        assert time.monotonic() - started >= 0.25

    async def test_waiting_fetch_gets_a_message_published_from_another_thread(self, transport):
        timer = threading.Timer(0.2, lambda: transport.publish(task("late")))
        timer.start()
        try:
            got = await transport.fetch(["celery"], 5, 10.0)
        finally:
            timer.join()
        assert [arg_of(d) for d in got] == ["late"]
        await transport.ack(got)

    async def test_queues_are_separate(self, transport):
        await transport.apublish_many([task("a", queue="celery"), task("b", queue="other")])
        only_other = await transport.fetch(["other"], 10, 1.0)
        assert [(arg_of(d), d.queue) for d in only_other] == [("b", "other")]
        both = await drain(transport, ["other", "celery"], 1)
        assert [(arg_of(d), d.queue) for d in both] == [("a", "celery")]
        await transport.ack(only_other + both)

    async def test_purge(self, transport):
        await transport.apublish_many([task(i) for i in range(5)] + [task("keep", queue="other")])
        assert await transport.purge("celery") == 5
        assert await transport.queue_length("celery") == 0
        assert await transport.queue_length("other") == 1

    # -- priorities -----------------------------------------------------------------------

    async def test_lower_priority_number_first_then_fifo(self, transport):
        if CAP_PRIORITY not in transport.capabilities:
            pytest.skip("transport has no priorities")
        order = [(9, "p9"), (3, "p3a"), (0, "p0"), (6, "p6"), (3, "p3b")]
        await transport.apublish_many([task(name, priority=p) for p, name in order])
        got = await drain(transport, ["celery"], 5)
        assert [arg_of(d) for d in got] == ["p0", "p3a", "p3b", "p6", "p9"]
        await transport.ack(got)

    async def test_priority_comes_before_queue_order(self, transport):
        if CAP_PRIORITY not in transport.capabilities:
            pytest.skip("transport has no priorities")
        await transport.apublish_many([task("c9", queue="celery", priority=9),
                                       task("o0", queue="other", priority=0),
                                       task("c0", queue="celery", priority=0)])
        got = await drain(transport, ["celery", "other"], 3)
        # kombu's Redis layout: every queue's priority-0 list, in queue order, then the next step
        assert [arg_of(d) for d in got] == ["c0", "o0", "c9"]
        await transport.ack(got)

    async def test_high_priority_overtakes_a_backlog(self, transport):
        if CAP_PRIORITY not in transport.capabilities:
            pytest.skip("transport has no priorities")
        await transport.apublish_many([task(i, priority=9) for i in range(50)])
        await transport.apublish(task("urgent", priority=0))
        [first] = await transport.fetch(["celery"], 1, 1.0)
        assert arg_of(first) == "urgent"
        await transport.ack([first])

    # -- settling ---------------------------------------------------------------------------

    async def test_requeue_gives_back_first_in_line_marked_redelivered(self, transport):
        await transport.apublish_many([task(i) for i in range(3)])
        [first] = await transport.fetch(["celery"], 1, 1.0)
        await transport.requeue([first])
        again = await drain(transport, ["celery"], 3)
        seen = [(arg_of(d), d.redelivered) for d in again]
        if self.requeue_keeps_order:
            assert [arg_of(d) for d in again] == [0, 1, 2]
            assert again[0].redelivered is True and again[1].redelivered is False, seen
        else:
            assert sorted(seen) == [(0, True), (1, False), (2, False)], seen
        await transport.ack(again)

    async def test_reject_with_requeue_goes_to_the_back(self, transport):
        await transport.apublish_many([task("a"), task("b")])
        [a] = await transport.fetch(["celery"], 1, 1.0)
        await transport.reject([a], requeue=True)
        again = await drain(transport, ["celery"], 2)
        if not self.requeue_keeps_order:
            assert sorted((arg_of(d), d.redelivered) for d in again) == [("a", True),
                                                                         ("b", False)]
        else:
            assert [arg_of(d) for d in again] == (["b", "a"] if self.requeue_to_back
                                                  else ["a", "b"])
            if not self.requeue_to_back:
                assert [d.redelivered for d in again] == [True, False]
        await transport.ack(again)

    async def test_reject_without_requeue_dead_letters_it_once(self, transport, url):
        await transport.apublish(task("bad"))
        since = time.monotonic()
        got = await transport.fetch(["celery"], 1, 1.0)
        await transport.reject(got)
        await transport.reject(got)  # a second reject moves nothing
        assert await nothing_restored_after_expiry(transport, since) == 0
        assert await transport.fetch(["celery"], 1, 0.2) == []
        [dead] = self.dead_letters(url)
        assert json.loads(dead)["headers"]["id"] == got[0].message.headers["id"]

    async def test_acked_messages_never_come_back(self, transport):
        await transport.apublish_many([task(i) for i in range(3)])
        since = time.monotonic()
        got = await drain(transport, ["celery"], 3)
        assert len(got) == 3
        await transport.ack(got)
        await transport.ack(got)  # a second ack is harmless
        assert await nothing_restored_after_expiry(transport, since) == 0
        assert await transport.fetch(["celery"], 5, 0.2) == []

    # -- reservations and redelivery -----------------------------------------------------------

    async def test_reserved_messages_are_not_handed_out_twice(self, transport, url):
        await transport.apublish_many([task(i) for i in range(40)])
        second = self.other(url)
        try:
            results = await asyncio.gather(*(
                drain(t, ["celery"], 10, timeout=2.0) for t in (transport, second, transport, second)
            ))
            tags = [d.delivery_tag for batch in results for d in batch]
            assert len(tags) == len(set(tags)) == 40
            assert sorted(arg_of(d) for batch in results for d in batch) == list(range(40))
        finally:
            await second.aclose()
            second.close()

    async def test_visibility_timeout_restores_only_expired_reservations(self, transport):
        if CAP_VISIBILITY_TIMEOUT not in transport.capabilities:
            pytest.skip("no visibility timeout: the server redelivers when a consumer dies")
        await transport.apublish_many([task(i) for i in range(3)])
        old_since = time.monotonic()
        old = await transport.fetch(["celery"], 2, 1.0)
        early = await transport.restore_visible()
        # Too young: certain only while under VISIBILITY has passed since before the fetch
        # (a machine so loaded that it has not can tell nothing here, and claims nothing).
        if time.monotonic() - old_since < VISIBILITY:
            assert early == 0
        await sleep_until(old_since + VISIBILITY + 0.3)
        young_since = time.monotonic()
        young = await transport.fetch(["celery"], 1, 1.0)
        restored = early + await restore_expired(transport, 2 - early, old_since)
        if time.monotonic() - young_since < VISIBILITY:  # the young one stays reserved
            assert restored == 2
        else:
            assert restored in (2, 3)
        # (3: the young one's reservation expired too, and it came back with the old ones)
        back, kept = (old, young) if restored == 2 else (old + young, [])
        again = await drain(transport, ["celery"], restored)
        assert sorted(arg_of(d) for d in again) == sorted(arg_of(d) for d in back)
        assert all(d.redelivered for d in again)
        await transport.ack(again + kept)
        assert await transport.restore_visible() == 0

    async def test_killed_consumer_process_messages_are_redelivered(self, transport, url):
        self.need_processes()
        await transport.apublish_many([task(i) for i in range(3)])
        since = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.conformance.child", "reserve", url,
             json.dumps(self.options()), "celery", "3"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        try:
            line = child.stdout.readline() if child.stdout else ""
            assert line.split() == ["READY", "3"], line
            assert await transport.fetch(["celery"], 3, 0.2) == []  # the child holds them
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            if child.stdout:
                child.stdout.close()
        if CAP_VISIBILITY_TIMEOUT in transport.capabilities:
            assert await restore_expired(transport, 3, since) == 3
        else:  # the server put them back when the child's connection died
            assert await transport.restore_visible() == 0
        again = await drain(transport, ["celery"], 3)
        assert sorted(arg_of(d) for d in again) == [0, 1, 2]
        assert all(d.redelivered for d in again)
        await transport.ack(again)

    async def test_concurrent_producer_processes(self, transport, url):
        self.need_processes()
        options = json.dumps(self.options())
        children = [
            subprocess.Popen([sys.executable, "-m", "tests.conformance.child", "publish", url,
                              options, "celery", "40", f"p{n}"], cwd=ROOT)
            for n in range(3)
        ]
        for child in children:
            assert child.wait(60) == 0
        got = await drain(transport, ["celery"], 120)
        args = [arg_of(d) for d in got]
        assert sorted(args) == sorted(f"p{n}-{i}" for n in range(3) for i in range(40))
        for n in range(3):  # each producer's messages stay in its order
            mine = [a for a in args if a.startswith(f"p{n}-")]
            assert mine == [f"p{n}-{i}" for i in range(40)]
        assert await transport.fetch(["celery"], 1, 0.1) == []
        await transport.ack(got)

    async def test_concurrent_producer_threads(self, transport):
        def produce(n: int) -> None:
            for i in range(25):
                transport.publish(task(f"t{n}-{i}"))

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        got = await drain(transport, ["celery"], 100)
        assert sorted(arg_of(d) for d in got) == sorted(f"t{n}-{i}" for n in range(4) for i in range(25))
        await transport.ack(got)

    # -- bad input ---------------------------------------------------------------------------

    async def test_malformed_elements_are_set_aside_and_good_messages_delivered(
        self, transport, url, caplog
    ):
        if not self.envelopes:
            pytest.skip("messages are frames, not envelopes: malformed bodies are the "
                        "consumer's to reject (the worker tests)")
        await transport.apublish(task("before"))
        since = time.monotonic()
        for raw in MALFORMED:
            self.plant_malformed(url, "celery", raw)
        await transport.apublish(task("after"))
        with caplog.at_level(logging.WARNING):
            # (a fetch may take one malformed element only: a fetch per element at most)
            got = await drain(transport, ["celery"], 2, timeout=0.5 * (len(MALFORMED) + 4))
        assert [arg_of(d) for d in got] == ["before", "after"]
        assert any("alformed" in r.getMessage() for r in caplog.records), caplog.text
        await transport.ack(got)
        await nothing_restored_after_expiry(transport, since)
        assert await transport.fetch(["celery"], 5, 0.2) == []  # the bad ones never return
        # each went to the dead-letter store, once
        assert sorted(self.dead_letters(url)) == sorted(MALFORMED)
