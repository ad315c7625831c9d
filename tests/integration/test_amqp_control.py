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
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from celery import Celery
from celery.events import EventReceiver
from celery.messaging import pidbox
from celery.messaging.protocol import Message
from celery.transport import envelope
from celery.transport.amqp_connection import Connections, parse_amqp_url
from celery.transport.amqp_mailbox import AMQPMailbox
from tests.conftest import app_module, flushed_redis_url
from tests.conftest import stop_process as stop

pytestmark = pytest.mark.amqp

AMQP_VHOST = "celery-pidbox-control"
REDIS_DB = 10  # results of the worker tests
ROOT = Path(__file__).resolve().parents[2]
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


# -- a real worker on amqp:// ------------------------------------------------------------------


def worker_env(url: str, data: Path) -> dict[str, str]:
    env = dict(os.environ, CONTROLAPP_URL=url, CONTROLAPP_DIR=str(data),
               CONTROLAPP_BACKEND=flushed_redis_url(REDIS_DB))
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "tests" / "apps"), str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_worker(url: str, data: Path, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-q", "-A", "controlapp", "worker", "-n", name, "-E",
         "-l", "INFO", "--loop-workers", "1", "--sync-workers", "2"],
        cwd=data, env=worker_env(url, data), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def celery_cli(url: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "controlapp", *args],
                          cwd=data, env=worker_env(url, data), capture_output=True, text=True,
                          timeout=60)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture
def app(amqp_url, tmp_path, monkeypatch):
    for key, value in worker_env(amqp_url, tmp_path).items():
        if key.startswith("CONTROLAPP_"):
            monkeypatch.setenv(key, value)
    with app_module("controlapp") as controlapp:
        yield controlapp


def publish_raw(url: str, exchange: str, routing_key: str,
                messages: list[tuple[bytes, str | None, str | None]]) -> None:
    """Publish bodies as they are (with that content type and encoding, or none) with py-amqp."""
    import amqp

    with amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest",
                         virtual_host=AMQP_VHOST) as conn:
        channel = conn.channel()
        for body, content_type, encoding in messages:
            props = {"content_type": content_type} if content_type else {}
            if encoding:
                props["content_encoding"] = encoding
            channel.basic_publish(amqp.Message(body, **props), exchange=exchange,
                                  routing_key=routing_key)


def test_status_inspect_control_and_shutdown_against_a_worker_on_amqp(amqp_url, tmp_path, app):
    name = f"amqp-{uuid.uuid4().hex[:8]}@test"
    proc = start_worker(amqp_url, tmp_path, name)
    try:
        wait_for(lambda: app.control.ping([name], timeout=0.5), 30, "the worker to answer")
        status = celery_cli(amqp_url, tmp_path, "status")
        assert status.returncode == 0, status.stderr
        assert f"->  {name}: OK" in status.stdout and "1 node online." in status.stdout
        assert app.control.ping(timeout=1.0) == [{name: {"ok": "pong"}}]
        stats = celery_cli(amqp_url, tmp_path, "inspect", "stats", "--json", "-d", name)
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)[name]["pid"] == proc.pid
        running = app.tasks["ctl.sleep"].delay("active", 30)
        inspect = app.control.inspect([name], timeout=1.0)
        active = wait_for(lambda: (inspect.active() or {}).get(name), 15, "the task to run")
        assert [(t["id"], t["name"], t["args"]) for t in active] == [
            (running.id, "ctl.sleep", ["active", 30])]
        limited = celery_cli(amqp_url, tmp_path, "control", "rate_limit", "ctl.tick", "10/m",
                             "-d", name)
        assert limited.returncode == 0, limited.stderr
        assert f"->  {name}: OK" in limited.stdout
        assert "new rate limit set successfully" in limited.stdout
        assert "ctl.tick [rate_limit=10/m]" in inspect.registered("rate_limit")[name]
        # the connections cut on the server: the worker subscribes again by itself
        assert close_connections_of(AMQP_VHOST) >= 2
        wait_for(lambda: app.control.ping([name], timeout=0.5), 30, "an answer after the cut")
        # malformed commands on the pidbox exchange: dropped with a line each, the worker goes on
        publish_raw(amqp_url, EXCHANGE, "", [
            (b"\xff\xfe not UTF-8", None, None),
            (b"not json at all", "application/json", "utf-8"),
            (b"[1, 2]", "application/json", "utf-8"),
            (b"\x80\x04K\x01.", "application/x-python-serialize", "binary")])
        assert app.control.ping([name], timeout=1.0) == [{name: {"ok": "pong"}}]
        assert running.revoke(terminate=True, wait=True, timeout=2) == [
            {name: {"ok": f"terminate: {running.id}"}}]
        down = celery_cli(amqp_url, tmp_path, "control", "shutdown", "-d", name)
        assert down.returncode == 0 and "shutdown sent" in down.stdout, down.stderr
        assert proc.wait(timeout=30) == 0
    except BaseException as exc:
        exc.add_note(f"worker output:\n{stop(proc)}")
        raise
    out = stop(proc)
    assert out.count("Dropping a malformed message") == 1, out
    assert out.count("discarding a malformed command message") == 3, out
    assert "Remote control: broker unreachable" in out, out


def test_events_of_a_worker_started_with_E_reach_receivers_on_amqp(amqp_url, tmp_path, app,
                                                                   caplog):
    caplog.set_level("WARNING", logger="celery.events.receiver")
    got: list[dict[str, Any]] = []
    receiver = app.events.Receiver(None, handlers={"*": got.append})
    seen = threading.Event()

    def capture() -> None:
        for _ in receiver.itercapture(timeout=60, wakeup=False):
            if any(e["type"] == "worker-offline" for e in got):
                seen.set()
                return

    capturing = threading.Thread(target=capture, daemon=True)
    capturing.start()
    wait_for(lambda: any(q.startswith("celeryev.") for q in list_queues(AMQP_VHOST)), 20,
             "the receiver's queue")
    name = f"ev-{uuid.uuid4().hex[:8]}@test"
    dump = subprocess.Popen([sys.executable, "-m", "celery", "-A", "controlapp", "events",
                             "--dump"], cwd=tmp_path, env=worker_env(amqp_url, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = start_worker(amqp_url, tmp_path, name)
    try:
        wait_for(lambda: app.control.ping([name], timeout=0.5), 30, "the worker to answer")
        result = app.tasks["ctl.tick"].delay("evented")
        assert result.get(timeout=20)
        types = lambda: {(e["type"], e.get("uuid")) for e in got}  # noqa: E731
        wait_for(lambda: {("task-received", result.id), ("task-started", result.id),
                          ("task-succeeded", result.id)} <= types(), 20, "the task's events")
        wait_for(lambda: ("worker-heartbeat", None) in types(), 10, "a heartbeat")
        # a malformed event on the exchange: dropped by the receiver, which goes on
        publish_raw(amqp_url, "celeryev", "worker.heartbeat",
                    [(b"not json", "application/json", "utf-8")])
        assert app.control.shutdown([name]) is None
        assert proc.wait(timeout=30) == 0
        assert seen.wait(20), [e["type"] for e in got]
    except BaseException as exc:
        exc.add_note(f"worker output:\n{stop(proc)}")
        raise
    finally:
        receiver.should_stop = True
        capturing.join(10)
        dump.terminate()
        printed = dump.communicate(timeout=30)[0]
    stop(proc)
    dropped = [r.getMessage() for r in caplog.records if r.name == "celery.events.receiver"]
    assert len(dropped) == 1 and "Dropping an event message (body)" in dropped[0], dropped
    online = [e for e in got if e["type"] == "worker-online"]
    assert [e["hostname"] for e in online] == [name]
    assert all(e["hostname"] == name for e in got)
    assert f"{name} [" in printed and "task succeeded" in printed.lower(), printed


def list_queues(vhost: str) -> list[str]:
    done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.split()[1:] if done.returncode == 0 else []
