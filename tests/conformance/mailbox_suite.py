"""The behaviour every broker's remote-control ``Mailbox`` must have. Each broker's test class
subclasses ``MailboxSuite`` and says how to make a fresh broker (and, for brokers that store
payloads themselves, how to plant a malformed one).

Only the ``Mailbox`` and ``FanoutSubscription`` protocols (transport/base.py) are used, through
``transport_for_url``, so a broker passes by behaving, not by its internals.

Run as ``python -m tests.conformance.mailbox_suite <url> <exchange> <reply exchange>
<routing key> <payload as JSON>`` it is the other process of the cross-process test: it
broadcasts the payload, sends it to the direct exchange and prints how many queues got it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from celery.messaging.protocol import build_task_message
from celery.transport import envelope
from celery.transport.base import CAP_BROADCAST, FanoutSubscription, Mailbox
from celery.transport.registry import transport_for_url

ROOT = Path(__file__).resolve().parents[2]
EXCHANGE = "celery.pidbox"
REPLY = "reply.celery.pidbox"
#: Generous: a bound on how long a call may take, never a measure of speed.
SLOW = 5.0


def payload(text: Any, *, ascii_only: bool = True) -> str:
    """A real kombu envelope, as remote control sends it (``ascii_only=False``: re-serialized
    with the non-ASCII characters as they are, as other clients may write it)."""
    key = f"id-{str(text)[:40]}"  # the same text gives the same payload
    message = build_task_message("conformance.t", (text,), {"ünï": "çødé ✓ 日本 🚀"},
                                 task_id=key, reply_to="r-ü")
    raw = envelope.encode(message, delivery_tag=key)[1]
    return raw if ascii_only else json.dumps(json.loads(raw), ensure_ascii=False)


async def collect(get: Callable[[float], Awaitable[list[str]]], expected: int,
                  calls: int = 20) -> list[str]:
    """Call ``get(0.5)`` until ``expected`` payloads came, at most ``calls`` times (bounded
    by calls rather than by the clock, as ``transport_suite.drain``)."""
    got: list[str] = []
    for _ in range(calls):
        if len(got) >= expected:
            break
        got += await get(0.5)
    return got


@contextlib.asynccontextmanager
async def client(url: str, options: dict[str, Any] | None = None) -> AsyncIterator[Any]:
    """A transport for ``url``, closed on the way out."""
    transport = transport_for_url(url, transport_options=options or {})
    try:
        yield transport
    finally:
        await transport.aclose()
        transport.close()


async def timed(call: Awaitable[list[str]]) -> tuple[list[str], float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


class MailboxSuite:
    """Subclasses define ``make_url``; brokers that store payloads define ``plant_malformed``;
    in-process brokers turn ``multiprocess`` off."""

    #: False for in-process brokers (memory://): the cross-process test doesn't apply.
    multiprocess = True
    #: False where the broker cannot count the queues a message reached (AMQP: the broker
    #: only returns an unroutable one); ``direct_publish`` then answers 1 for "one or more".
    counts_queues = True

    def make_url(self, tmp_path: Path) -> str:
        """URL of a fresh, empty broker."""
        raise NotImplementedError

    def plant_malformed(self, url: str, kind: str, name: str, raw: bytes) -> None:
        """Store ``raw`` as one payload of fanout exchange ``name`` (``kind == "fanout"``) or
        of direct queue ``name`` (``"direct"``), bypassing the broker's encoder."""
        pytest.skip("this broker keeps no payloads of its own to corrupt")

    def options(self) -> dict[str, Any]:
        return {}

    def canonical(self, payload: str) -> Any:
        """What of a payload must arrive unchanged: all of it, by default. A broker that
        carries a payload as a message of its own (AMQP: the envelope's body is the message
        body, its headers and properties the message's) delivers an equivalent envelope."""
        return payload

    def same(self, got: list[str], sent: list[str]) -> bool:
        """``got`` are ``sent``, in order, as far as ``canonical`` tells."""
        return [self.canonical(p) for p in got] == [self.canonical(p) for p in sent]

    # -- fixtures ---------------------------------------------------------------------------

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return self.make_url(tmp_path)

    @pytest.fixture
    async def mailbox(self, url: str) -> AsyncIterator[Any]:
        async with client(url, self.options()) as transport:
            yield transport

    @pytest.fixture
    async def other(self, url: str) -> AsyncIterator[Any]:
        """A second client on the same broker (another connection / file handle)."""
        async with client(url, self.options()) as transport:
            yield transport

    @pytest.fixture
    async def subscribe(self, mailbox: Any) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """``await subscribe(exchange=EXCHANGE, on=mailbox)``; closed after the test."""
        made: list[FanoutSubscription] = []

        async def subscribe(exchange: str = EXCHANGE, on: Any = None) -> FanoutSubscription:
            subscription = await (on or mailbox).fanout_subscribe(exchange)
            made.append(subscription)
            return subscription

        yield subscribe
        for subscription in made:
            await subscription.close()

    def need_processes(self) -> None:
        if not self.multiprocess:
            pytest.skip("in-process broker: other processes cannot reach it")

    # -- fanout -----------------------------------------------------------------------------

    async def test_is_a_mailbox(self, mailbox, subscribe):
        assert isinstance(mailbox, Mailbox)
        assert CAP_BROADCAST in mailbox.capabilities
        assert isinstance(await subscribe(), FanoutSubscription)

    async def test_fanout_reaches_every_subscriber_in_publish_order(self, mailbox, other,
                                                                    subscribe):
        subscribers = [await subscribe(), await subscribe(), await subscribe(on=other)]
        sent = [payload(i) for i in range(5)]
        for p in sent[:3]:
            await mailbox.fanout_publish(EXCHANGE, p)
        for p in sent[3:]:
            await other.fanout_publish(EXCHANGE, p)
        for subscription in subscribers:
            assert self.same(await collect(subscription.get, 5), sent)
            assert await subscription.get(0.1) == []  # each copy once

    async def test_fanout_exchanges_are_separate(self, mailbox, subscribe):
        mine, theirs = await subscribe("a.pidbox"), await subscribe("b.pidbox")
        await mailbox.fanout_publish("b.pidbox", payload("b"))
        await mailbox.fanout_publish("a.pidbox", payload("a"))
        assert self.same(await collect(mine.get, 1), [payload("a")])
        assert self.same(await collect(theirs.get, 1), [payload("b")])
        assert await mine.get(0.2) == [] and await theirs.get(0.01) == []

    async def test_a_later_subscriber_does_not_get_earlier_payloads(self, mailbox, subscribe):
        await mailbox.fanout_publish(EXCHANGE, payload("before"))
        late = await subscribe()
        await mailbox.fanout_publish(EXCHANGE, payload("after"))
        assert self.same(await collect(late.get, 1), [payload("after")])
        assert await late.get(0.3) == []

    async def test_close_stops_delivery(self, mailbox, subscribe):
        closed, open_ = await subscribe(), await subscribe()
        await closed.close()
        await closed.close()  # idempotent
        await mailbox.fanout_publish(EXCHANGE, payload("x"))
        assert self.same(await collect(open_.get, 1), [payload("x")])
        got, took = await timed(closed.get(0.3))
        assert got == [] and took < SLOW

    async def test_get_times_out_with_nothing(self, subscribe):
        subscription = await subscribe()
        got, took = await timed(subscription.get(0.3))
        assert got == [] and took < SLOW

    async def test_waiting_get_wakes_for_a_publish(self, mailbox, subscribe):
        subscription = await subscribe()

        async def publish_later() -> None:
            await asyncio.sleep(0.2)
            await mailbox.fanout_publish(EXCHANGE, payload("late"))

        publisher = asyncio.create_task(publish_later())
        got, took = await timed(subscription.get(30.0))
        await publisher
        assert self.same(got, [payload("late")]) and took < SLOW

    # -- direct -----------------------------------------------------------------------------

    async def test_direct_publish_reaches_only_queues_bound_with_its_key(self, mailbox):
        await mailbox.direct_bind(REPLY, "ticket-1", "q1")
        await mailbox.direct_bind(REPLY, "ticket-1", "q2")
        await mailbox.direct_bind(REPLY, "ticket-2", "q3")
        await mailbox.direct_bind("other.pidbox", "ticket-1", "q4")
        assert await mailbox.direct_publish(REPLY, "ticket-1", payload(1)) == \
            (2 if self.counts_queues else 1)
        assert self.same(await collect(lambda t: mailbox.pop_raw("q1", t), 1), [payload(1)])
        assert self.same(await collect(lambda t: mailbox.pop_raw("q2", t), 1), [payload(1)])
        for queue in ("q1", "q3", "q4"):
            assert await mailbox.pop_raw(queue, 0.1) == []

    async def test_binding_twice_delivers_once(self, mailbox):
        await mailbox.direct_bind(REPLY, "ticket", "q")
        await mailbox.direct_bind(REPLY, "ticket", "q")
        assert await mailbox.direct_publish(REPLY, "ticket", payload("once")) == 1
        assert self.same(await collect(lambda t: mailbox.pop_raw("q", t), 1), [payload("once")])
        assert await mailbox.pop_raw("q", 0.2) == []

    async def test_unbound_publish_returns_zero_and_is_dropped(self, mailbox):
        assert await mailbox.direct_publish(REPLY, "nobody", payload("lost")) == 0
        await mailbox.direct_bind(REPLY, "nobody", "q")
        assert await mailbox.pop_raw("q", 0.3) == []

    async def test_unbind_deletes_waiting_payloads(self, mailbox, other):
        await mailbox.direct_bind(REPLY, "ticket", "q")
        await mailbox.direct_publish(REPLY, "ticket", payload(1))
        await mailbox.direct_publish(REPLY, "ticket", payload(2))
        await other.direct_unbind(REPLY, "ticket", "q")
        await mailbox.direct_unbind(REPLY, "ticket", "q")  # idempotent
        assert await mailbox.pop_raw("q", 0.3) == []
        assert await mailbox.direct_publish(REPLY, "ticket", payload(3)) == 0
        await mailbox.direct_bind(REPLY, "ticket", "q")
        assert await mailbox.pop_raw("q", 0.2) == []

    async def test_unbinding_one_key_keeps_the_queues_other_bindings(self, mailbox):
        await mailbox.direct_bind(REPLY, "ticket-1", "q")
        await mailbox.direct_bind(REPLY, "ticket-2", "q")
        await mailbox.direct_unbind(REPLY, "ticket-1", "q")
        assert await mailbox.direct_publish(REPLY, "ticket-1", payload(1)) == 0
        assert await mailbox.direct_publish(REPLY, "ticket-2", payload(2)) == 1
        assert self.same(await collect(lambda t: mailbox.pop_raw("q", t), 1), [payload(2)])

    async def test_pop_raw_gives_oldest_first_and_times_out(self, mailbox, other):
        await mailbox.direct_bind(REPLY, "ticket", "q")
        sent = [payload(i) for i in range(6)]
        for i, p in enumerate(sent):
            assert await (mailbox if i % 2 else other).direct_publish(REPLY, "ticket", p) == 1
        assert self.same(await collect(lambda t: mailbox.pop_raw("q", t), 6), sent)
        got, took = await timed(mailbox.pop_raw("q", 0.3))
        assert got == [] and took < SLOW

    async def test_waiting_pop_raw_wakes_for_a_publish(self, mailbox):
        await mailbox.direct_bind(REPLY, "ticket", "q")

        async def publish_later() -> None:
            await asyncio.sleep(0.2)
            await mailbox.direct_publish(REPLY, "ticket", payload("late"))

        publisher = asyncio.create_task(publish_later())
        got, took = await timed(mailbox.pop_raw("q", 30.0))
        await publisher
        assert self.same(got, [payload("late")]) and took < SLOW

    async def test_direct_queues_leave_task_queues_alone(self, mailbox):
        await mailbox.apublish(build_task_message("conformance.t", ("task",), queue="celery"))
        await mailbox.direct_bind(REPLY, "ticket", "reply-q")
        await mailbox.direct_publish(REPLY, "ticket", payload("reply"))
        assert await mailbox.queue_length("celery") == 1
        assert await mailbox.purge("celery") == 1
        assert self.same(await collect(lambda t: mailbox.pop_raw("reply-q", t), 1),
                         [payload("reply")])

    # -- payloads ----------------------------------------------------------------------------

    async def test_payloads_round_trip_byte_for_byte(self, mailbox, subscribe):
        sent = [payload("ü ✓ 日本 🚀"), payload("ü ✓ 日本 🚀", ascii_only=False),
                payload("x" * 200_000, ascii_only=False)]
        subscription = await subscribe()
        await mailbox.direct_bind(REPLY, "ticket", "q")
        for p in sent:
            await mailbox.fanout_publish(EXCHANGE, p)
            await mailbox.direct_publish(REPLY, "ticket", p)
        for got in (await collect(subscription.get, 3),
                    await collect(lambda t: mailbox.pop_raw("q", t), 3)):
            assert self.same(got, sent)

    async def test_a_publish_from_another_process_reaches_this_one(self, url, mailbox, subscribe):
        self.need_processes()
        subscription = await subscribe()
        await mailbox.direct_bind(REPLY, "ticket", "q")
        sent = payload("from a child ü 🚀", ascii_only=False)
        child = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tests.conformance.mailbox_suite", url, EXCHANGE, REPLY,
             "ticket", json.dumps(sent)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["1"]
        assert self.same(await collect(subscription.get, 1), [sent])
        assert self.same(await collect(lambda t: mailbox.pop_raw("q", t), 1), [sent])

    # -- bad stored data --------------------------------------------------------------------

    async def test_malformed_fanout_payloads_are_skipped(self, url, mailbox, subscribe, caplog):
        subscription = await subscribe()
        await mailbox.fanout_publish(EXCHANGE, payload("before"))
        self.plant_malformed(url, "fanout", EXCHANGE, b"\xff\xfe not UTF-8")
        await mailbox.fanout_publish(EXCHANGE, payload("after"))
        with caplog.at_level(logging.WARNING):
            got = await collect(subscription.get, 2)
            assert await subscription.get(0.2) == []
        assert self.same(got, [payload("before"), payload("after")])
        assert any("alformed" in r.getMessage() for r in caplog.records), caplog.text

    async def test_malformed_direct_payloads_are_skipped(self, url, mailbox, caplog):
        await mailbox.direct_bind(REPLY, "ticket", "q")
        await mailbox.direct_publish(REPLY, "ticket", payload("before"))
        self.plant_malformed(url, "direct", "q", b"\xff\xfe not UTF-8")
        await mailbox.direct_publish(REPLY, "ticket", payload("after"))
        with caplog.at_level(logging.WARNING):
            got = await collect(lambda t: mailbox.pop_raw("q", t), 2)
            assert await mailbox.pop_raw("q", 0.2) == []  # and it does not come back
        assert self.same(got, [payload("before"), payload("after")])
        assert any("alformed" in r.getMessage() for r in caplog.records), caplog.text


def _main(url: str, exchange: str, reply: str, routing_key: str, sent: str) -> None:
    async def main() -> None:
        async with client(url) as transport:
            text = json.loads(sent)
            await transport.fanout_publish(exchange, text)
            print(await transport.direct_publish(reply, routing_key, text), flush=True)

    asyncio.run(main())


if __name__ == "__main__":
    _main(*sys.argv[1:])
