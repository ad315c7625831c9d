"""Remote control and events over RabbitMQ.

* Wire compatibility with kombu on py-amqp (the client upstream Celery uses), both ways: a
  kombu pidbox client broadcasting to our mailbox and reading our reply, our mailbox's
  command answered by a kombu pidbox node, events published as upstream's dispatcher
  publishes them read by our receiver, and ours read by a queue declared as upstream's
  receiver declares it. The exchanges are declared by both sides, so their flags agree.
* A real worker of ours on ``amqp://``: ``celery status``, ``inspect``/``control`` from the
  CLI and ``app.control``, events from a worker started with ``-E``, malformed control and
  event messages dropped while the worker keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest

from celery import Celery
from celery.events import EventReceiver
from celery.messaging import pidbox
from celery.messaging.protocol import Message
from celery.transport import envelope
from celery.transport.amqp_connection import Connections, parse_amqp_url
from celery.transport.amqp_mailbox import AMQPMailbox

pytestmark = pytest.mark.amqp

AMQP_VHOST = "celery-pidbox-control"
EXCHANGE, REPLY = "celery.pidbox", "reply.celery.pidbox"


def kombu_mailbox() -> Any:
    """kombu's pidbox Mailbox as upstream Celery 5.5+ makes it (app/control.py)."""
    from kombu.pidbox import Mailbox

    return Mailbox("celery", type="fanout", accept=["json"], serializer="json",
                   queue_ttl=300.0, reply_queue_ttl=300.0, queue_expires=10.0,
                   reply_queue_expires=10.0, queue_durable=False, queue_exclusive=False)


def in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target(result)`` (blocking kombu code) in a thread; its exception lands in
    ``result["error"]``."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            target(result)
        except BaseException as exc:  # handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


async def collect(get: Any, expected: int, calls: int = 40) -> list[str]:
    got: list[str] = []
    for _ in range(calls):
        if len(got) >= expected:
            break
        got += await get(0.5)
    return got


def list_exchanges(vhost: str) -> dict[str, tuple[str, ...]]:
    done = subprocess.run(["rabbitmqctl", "-q", "list_exchanges", "-p", vhost, "name", "type",
                           "durable", "auto_delete"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()[1:] if line.strip()]
    return {row[0]: tuple(row[1:]) for row in rows}


@pytest.fixture
async def mailbox(amqp_url: str) -> Any:
    connections = Connections(parse_amqp_url(amqp_url))
    yield AMQPMailbox(connections)
    await connections.aclose()


async def test_kombu_pidbox_client_and_node_talk_with_our_mailbox(amqp_url, mailbox):
    from kombu import Connection

    # 1. upstream's client -> our subscriber, our reply -> upstream's client
    subscription = await mailbox.fanout_subscribe(EXCHANGE)

    def upstream_client(result: dict[str, Any]) -> None:
        with Connection(amqp_url) as conn:
            result["replies"] = kombu_mailbox()(conn)._broadcast(
                "ping", {"x": 1}, reply=True, timeout=10, limit=1)

    thread, result = in_thread(upstream_client)
    [command] = await collect(subscription.get, 1)
    body, headers = pidbox.decode(command)
    assert (body["method"], body["arguments"], body["destination"]) == ("ping", {"x": 1}, None)
    assert headers["clock"] >= 1 and headers["expires"] > time.time()
    reply_to = body["reply_to"]
    assert reply_to["exchange"] == REPLY
    reply = pidbox.encode({"us@test": {"ok": "pong"}}, REPLY, reply_to["routing_key"],
                          {"ticket": body["ticket"], "clock": 7})
    assert await mailbox.direct_publish(REPLY, reply_to["routing_key"], reply) == 1
    await asyncio.to_thread(thread.join, 30)
    assert "error" not in result, result
    assert result["replies"] == [{"us@test": {"ok": "pong"}}]
    await subscription.close()

    # 2. our command -> upstream's node, its reply -> our reply queue
    ready = threading.Event()

    def upstream_node(result: dict[str, Any]) -> None:
        with Connection(amqp_url) as conn:
            node = kombu_mailbox()(conn).Node(
                "kombu@test", handlers={"ping": lambda state, **kw: {"ok": "pong", **kw}})
            with node.listen(channel=conn.default_channel):
                ready.set()
                conn.drain_events(timeout=20)

    thread, result = in_thread(upstream_node)
    assert await asyncio.to_thread(ready.wait, 20)
    oid = str(uuid.uuid4())
    queue = f"{oid}.{REPLY}"
    await mailbox.direct_bind(REPLY, oid, queue)
    command = {"method": "ping", "arguments": {"x": 2}, "destination": ["kombu@test"],
               "pattern": None, "matcher": None, "ticket": "t-1",
               "reply_to": {"exchange": REPLY, "routing_key": oid}}
    await mailbox.fanout_publish(EXCHANGE, pidbox.encode(
        command, EXCHANGE, "", {"clock": 1, "expires": time.time() + 10}))
    [answer] = await collect(lambda t: mailbox.pop_raw(queue, t), 1)
    await asyncio.to_thread(thread.join, 30)
    assert "error" not in result, result
    body, headers = pidbox.decode(answer)
    assert body == {"kombu@test": {"ok": "pong", "x": 2}} and headers["ticket"] == "t-1"
    await mailbox.direct_unbind(REPLY, oid, queue)

    # both sides declared the exchanges: kombu's flags and ours agree
    exchanges = list_exchanges(AMQP_VHOST)
    assert exchanges[EXCHANGE] == ("fanout", "false", "false")
    assert exchanges[REPLY] == ("direct", "false", "false")


async def test_events_cross_between_kombu_and_our_mailbox(amqp_url, mailbox):
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    app = Celery("events-interop", broker="memory://", set_as_current=False)
    receiver = EventReceiver(mailbox, app=app)
    subscription = await mailbox.fanout_subscribe("celeryev", "#")
    event_exchange = Exchange("celeryev", type="topic")  # upstream's celery/events/event.py

    # 1. upstream's dispatcher publishes a heartbeat and a task.multi batch
    heartbeat = {"type": "worker-heartbeat", "hostname": "up@test", "timestamp": time.time(),
                 "utcoffset": 0, "clock": 3, "freq": 2.0, "active": 0, "processed": 1}
    batch = [{"type": "task-received", "uuid": "t-1", "hostname": "up@test", "clock": 4,
              "timestamp": time.time(), "utcoffset": 0, "name": "tasks.add"},
             {"type": "task-succeeded", "uuid": "t-1", "hostname": "up@test", "clock": 5,
              "timestamp": time.time(), "utcoffset": 0, "result": "3", "runtime": 0.1}]

    def upstream_dispatcher(result: dict[str, Any]) -> None:
        with Connection(amqp_url) as conn:
            producer = Producer(conn.default_channel)
            for body, key in ((heartbeat, "worker.heartbeat"), (batch, "task.multi")):
                producer.publish(body, exchange=event_exchange, routing_key=key,
                                 headers={"hostname": "up@test"}, serializer="json",
                                 delivery_mode=1, declare=[event_exchange])

    thread, result = in_thread(upstream_dispatcher)
    payloads = await collect(subscription.get, 2)
    await asyncio.to_thread(thread.join, 30)
    assert "error" not in result, result
    keys = [envelope.decode("", p, "").message.routing_key for p in payloads]
    assert keys == ["worker.heartbeat", "task.multi"]
    events = [e for p in payloads for e in receiver.receive(p)]
    assert [(e["type"], e["hostname"]) for e in events] == [
        ("worker-heartbeat", "up@test"), ("task-received", "up@test"),
        ("task-succeeded", "up@test")]
    await subscription.close()

    # 2. our publish -> a queue declared as upstream's EventReceiver declares it
    def upstream_receiver(result: dict[str, Any]) -> None:
        queue = Queue(f"celeryev.{uuid.uuid4()}", exchange=event_exchange, routing_key="task.#",
                      auto_delete=True, durable=False, exclusive=False, message_ttl=5.0,
                      expires=60.0)
        got: list[tuple[Any, str, dict[str, Any]]] = []
        with Connection(amqp_url) as conn:
            with Consumer(conn.default_channel, [queue], accept=["json"], no_ack=True,
                          callbacks=[lambda body, message: got.append(
                              (body, message.delivery_info["routing_key"], message.headers))]):
                result["ready"].set()
                deadline = time.monotonic() + 20
                while not got and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        pass
        result["got"] = got

    result = {"ready": threading.Event()}
    thread = threading.Thread(target=lambda: _guarded(upstream_receiver, result), daemon=True)
    thread.start()
    assert await asyncio.to_thread(result["ready"].wait, 20)
    ours = [{"type": "task-started", "uuid": "t-2", "hostname": "us@test", "clock": 9,
             "timestamp": time.time(), "utcoffset": 0, "pid": 1}]
    for body, key in ((heartbeat, "worker.heartbeat"), (ours, "task.multi")):  # one filtered
        message = Message(body=json.dumps(body).encode(), content_type="application/json",
                          content_encoding="utf-8", headers={"hostname": "us@test"},
                          properties={"delivery_mode": 1}, exchange="celeryev",
                          routing_key=key)
        await mailbox.fanout_publish("celeryev", envelope.encode(message)[1], key)
    await asyncio.to_thread(thread.join, 30)
    assert "error" not in result, result
    assert result["got"] == [(ours, "task.multi", {"hostname": "us@test"})]
    assert list_exchanges(AMQP_VHOST)["celeryev"] == ("topic", "true", "false")


def _guarded(target: Any, result: dict[str, Any]) -> None:
    try:
        target(result)
    except BaseException as exc:  # handed to the test
        result["error"] = exc


def close_connections_of(vhost: str) -> int:
    """Close, on the server, every client connection to ``vhost`` (this test's own)."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "vhost", "pid"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    pids = [line.split("\t")[1] for line in listed.stdout.splitlines()
            if line.split("\t")[0] == vhost]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: connection cut"],
                       capture_output=True, text=True, timeout=60, check=True)
    return len(pids)


async def test_after_the_connection_is_cut_subscribers_resubscribe_and_replies_flow(
        amqp_url, mailbox):
    from celery.exceptions import ConnectionLost

    subscription = await mailbox.fanout_subscribe(EXCHANGE)
    await mailbox.direct_bind(REPLY, "ticket", "q")
    assert await mailbox.pop_raw("q", 0.05) == []  # its consumer runs
    first = pidbox.encode({"method": "ping"}, EXCHANGE, "", {"clock": 1})
    await mailbox.fanout_publish(EXCHANGE, first)
    assert len(await collect(subscription.get, 1)) == 1
    assert close_connections_of(AMQP_VHOST) >= 1
    # the subscription says it is gone (within a few calls), and the caller subscribes again
    with pytest.raises(ConnectionLost):
        for _ in range(40):
            await subscription.get(0.25)
    await subscription.close()
    for _ in range(100):  # the robust connection comes back by itself
        try:
            subscription = await mailbox.fanout_subscribe(EXCHANGE)
            break
        except ConnectionLost:
            await asyncio.sleep(0.1)
    second = pidbox.encode({"method": "stats"}, EXCHANGE, "", {"clock": 2})
    await mailbox.fanout_publish(EXCHANGE, second)
    [got] = await collect(subscription.get, 1)
    assert pidbox.decode(got)[0] == {"method": "stats"}
    # the reply queue's consumer is started again on the next pop
    await mailbox.direct_bind(REPLY, "ticket", "q")
    assert await mailbox.direct_publish(REPLY, "ticket", first) == 1
    [reply] = await collect(lambda t: mailbox.pop_raw("q", t), 1)
    assert pidbox.decode(reply)[0] == {"method": "ping"}
    await subscription.close()
