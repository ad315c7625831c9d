"""What the AMQP transport does beyond the shared conformance suite, on the real RabbitMQ:
acks batched with ``multiple=True``, QoS following ``set_prefetch``, a consumer the server
cancelled (queue deleted) replaced, ``stop_consuming`` returning prefetched messages, the wire
form kombu's py-amqp transport uses, and the app's sync publish through its portal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from celery import Celery
from celery.exceptions import ConnectionLost
from celery.messaging.protocol import build_task_message, decode_body
from celery.transport.amqp import AMQPTransport

pytestmark = pytest.mark.amqp

AMQP_VHOST = "celery-amqp-transport"


def task(arg: Any, **options: Any):
    return build_task_message("amqp.t", (arg,), **options)


def arg_of(delivery) -> Any:
    m = delivery.message
    return decode_body(m.body, m.content_type, m.content_encoding,
                       frozenset({"application/json"})).args[0]


async def drain(transport: AMQPTransport, expected: int, rounds: int = 40) -> list:
    got: list = []
    for _ in range(rounds):
        if len(got) >= expected:
            break
        got += await transport.fetch(["celery"], expected - len(got), 0.25)
    return got


def spy_acks(delivery) -> list[tuple[int, bool]]:
    """Record the basic.ack frames sent on the (real) channel ``delivery`` came on."""
    channel = delivery.raw.channel
    sent: list[tuple[int, bool]] = []
    real = channel.basic_ack

    async def basic_ack(tag: int, multiple: bool = False, **kw: Any) -> Any:
        sent.append((tag, multiple))
        return await real(tag, multiple=multiple, **kw)

    channel.basic_ack = basic_ack
    return sent


async def test_acks_batched_with_multiple_where_order_allows(amqp_url: str) -> None:
    transport = AMQPTransport(amqp_url)
    try:
        await transport.declare(["celery"])
        await transport.apublish_many([task(i) for i in range(8)])
        got = await drain(transport, 8)
        assert [arg_of(d) for d in got] == list(range(8))
        sent = spy_acks(got[0])
        await transport.ack(got[:3])  # the oldest three: one frame
        await transport.ack([got[4], got[6]])  # 3 still out: one frame each
        await transport.ack(got[:3])  # acked already: nothing sent
        await transport.ack([got[3], got[5]])  # now 3..6 are the oldest outstanding
        assert sent == [(3, True), (5, False), (7, False), (6, True)]
        await transport.requeue([got[7]])  # back, redelivered
        [again] = await drain(transport, 1)
        assert arg_of(again) == 7 and again.redelivered
        await transport.ack([again])
    finally:
        await transport.aclose()
    # nothing acked comes back on a new connection
    fresh = AMQPTransport(amqp_url)
    try:
        assert await fresh.fetch(["celery"], 10, 0.3) == []
        assert await fresh.queue_length("celery") == 0
    finally:
        await fresh.aclose()


async def test_prefetch_follows_the_window_and_held_messages(amqp_url: str) -> None:
    transport = AMQPTransport(amqp_url)
    try:
        await transport.declare(["celery"])
        await transport.apublish_many([task(i) for i in range(10)])
        transport.set_prefetch(2)  # a window of 2
        first = await drain(transport, 10, rounds=3)  # asks for more than the window allows
        assert len(first) == 2 and await transport.queue_length("celery") == 8
        transport.set_prefetch(2 + 3)  # three of them now held for their ETA
        more = await drain(transport, 3)
        assert [arg_of(d) for d in first + more] == list(range(5))
        assert await transport.queue_length("celery") == 5
        # stop: what was prefetched and never handed out goes back now
        transport.set_prefetch(10)
        await transport.fetch(["celery"], 1, 1.0)  # the rest arrive in the buffer
        await asyncio.sleep(0.2)
        returned = await transport.stop_consuming()
        assert returned == 4
        for _ in range(50):  # (the requeues have no reply: the count catches up)
            if await transport.queue_length("celery") == 4:
                break
            await asyncio.sleep(0.02)
        assert await transport.queue_length("celery") == 4
        await transport.ack(first + more)
    finally:
        await transport.aclose()


async def test_a_deleted_queue_is_declared_again_and_consumed(amqp_url: str, caplog) -> None:
    transport = AMQPTransport(amqp_url)
    other = AMQPTransport(amqp_url)
    try:
        await transport.declare(["celery"])
        assert await transport.fetch(["celery"], 1, 0.2) == []  # consuming now
        channel = await other.connections.channel("admin", confirms=False)
        await channel.queue_delete("celery")
        await asyncio.sleep(0.2)
        assert await transport.fetch(["celery"], 1, 0.3) == []  # notices, declares, consumes
        assert any("cancelled the consumer" in r.getMessage() for r in caplog.records)
        await other.apublish(task("after"))
        [got] = await drain(transport, 1)
        assert arg_of(got) == "after"
        await transport.ack([got])
    finally:
        await transport.aclose()
        await other.aclose()


async def test_wire_form_is_kombus(amqp_url: str) -> None:
    """What lands on the queue: kombu's py-amqp properties for a Celery protocol-2 message."""
    import aio_pika

    transport = AMQPTransport(amqp_url)
    try:
        sent = task("x", reply_to="reply-q", priority=3)
        await transport.apublish(sent)
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            channel = await conn.channel()
            queue = await channel.get_queue("celery")
            raw = await queue.get(timeout=5)
            assert raw.body == sent.body
            assert raw.content_type == "application/json" and raw.content_encoding == "utf-8"
            assert raw.headers == sent.headers
            assert raw.correlation_id == sent.headers["id"] and raw.reply_to == "reply-q"
            assert raw.priority == 3 and raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert raw.exchange == "" and raw.routing_key == "celery"
            await raw.ack()
    finally:
        await transport.aclose()


def test_sync_publish_goes_through_the_apps_portal(amqp_url: str) -> None:
    app = Celery("amqp-portal", broker=amqp_url, set_as_current=False)
    try:
        for i in range(5):
            app.send_task("amqp.t", (i,))
        transport = app.transport
        assert transport.driver_type == "amqp"
        assert app.connection().transport.driver_type == "amqp"
        # the portal loop's one connection carried them all
        assert app.portal.call(transport.queue_length("celery")) == 5
        states = list(transport.connections._states)
        assert states == [app.portal.loop]
    finally:
        app.close()


def test_celery_purge_empties_the_queues(amqp_url: str, tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    app = Celery("amqp-purge", broker=amqp_url, set_as_current=False)
    try:
        for i in range(7):
            app.send_task("amqp.t", (i,))
    finally:
        app.close()
    env = dict(os.environ, AMQPAPP_BROKER=amqp_url, AMQPAPP_LOG=str(tmp_path / "log"),
               PYTHONPATH=os.pathsep.join([str(root / "tests" / "apps"), str(root),
                                           os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "amqpapp", "purge", "-f"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Purged 7 messages from 1 known task queue" in done.stdout

    async def length() -> int:
        transport = AMQPTransport(amqp_url)
        try:
            return await transport.queue_length("celery")
        finally:
            await transport.aclose()

    assert asyncio.run(length()) == 0


async def test_a_malformed_frame_closes_the_connection_which_comes_back(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Our frame reader refuses a content header whose headers table runs past its end with
    one line; aiormq closes the connection, the robust connection reconnects, the message
    left unacked is delivered again, and publishing and consuming go on."""
    import struct

    from celery.transport.amqp_frames import FastTransportFactory

    readers: list[asyncio.StreamReader] = []
    create = FastTransportFactory.create

    async def capture(self: FastTransportFactory, url: Any, **kwargs: Any) -> Any:
        reader, writer = await create(self, url, **kwargs)
        readers.append(reader)
        return reader, writer

    monkeypatch.setattr(FastTransportFactory, "create", capture)
    transport = AMQPTransport(amqp_url, transport_options={"reconnect_interval": 0.2})
    try:
        await transport.apublish(task(1))
        [first] = await drain(transport, 1)
        assert arg_of(first) == 1 and len(readers) == 1
        payload = struct.pack(">HHQH", 60, 0, 0, 0x2000) + struct.pack(">I", 9) + b"\x01k"
        readers[0].feed_data(struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce")
        deadline = asyncio.get_running_loop().time() + 15
        again: list = []
        lost: list[str] = []
        while not again:  # as the worker's fetch loop: back off on ConnectionLost, go on
            assert asyncio.get_running_loop().time() < deadline, "no reconnection"
            try:
                again = await transport.fetch(["celery"], 1, 0.2)
            except ConnectionLost as exc:
                lost.append(str(exc))
                await asyncio.sleep(0.1)
        # the unacked message, delivered again on the new connection
        assert arg_of(again[0]) == 1 and again[0].redelivered and len(readers) >= 2
        assert lost and "malformed AMQP field table" in lost[0] and "\n" not in lost[0]
        await transport.ack(again)
        await transport.apublish(task(2))
        [second] = await drain(transport, 1)
        assert arg_of(second) == 2
        await transport.ack([second])
    finally:
        await transport.aclose()
    assert "malformed AMQP field table" in caplog.text



#: A user's program: ``asend_task`` inside its own ``asyncio.run`` (or ``uvloop.run``), on a
#: loop that no app code closes. Prints whether the connection made on that loop was closed
#: by the time the runner closed the loop, and the queue's length (read on the portal).
USER_LOOP = """
import asyncio, gc, json, sys
from celery import Celery
app = Celery("userloop", broker=sys.argv[1], set_as_current=False)
runner = asyncio.run if sys.argv[2] == "asyncio" else __import__("uvloop").run

async def main():
    for i in range(3):
        await app.asend_task("amqp.t", (i,))
    return [s.connection for s in app.transport.connections._states.values()]

conns = runner(main())
closed = [c.is_closed for c in conns]
del conns  # aio-pika's Connection.__del__ fails if it first runs at interpreter exit
gc.collect()
print(json.dumps({"closed": closed,
                  "queued": app.portal.call(app.transport.queue_length("celery"))}))
app.close()
"""


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_a_connection_on_the_users_own_loop_is_closed_when_that_loop_ends(
        amqp_url: str, runner: str, tmp_path) -> None:
    """Left open, the robust connection's close callbacks ran as tasks the closed loop
    collected unfinished: "Task was destroyed but it is pending!" and an "Event loop is
    closed" traceback on the user's stderr at exit."""
    import json
    import subprocess
    import sys

    if runner == "uvloop":
        pytest.importorskip("uvloop")
    done = subprocess.run([sys.executable, "-c", USER_LOOP, amqp_url, runner], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"closed": [True], "queued": 3}
    assert done.stderr == ""
