"""rpc:// on real RabbitMQ: the reply queue and messages as upstream Celery makes them, and a
real worker process answering sync and async clients; SQLite and Redis results beside an
AMQP broker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery import Celery, group, states
from celery._state import Context
from celery.backends.base import backend_for_url
from celery.backends.rpc import RPCBackend
from celery.exceptions import ImproperlyConfigured, TaskRevokedError, TimeoutError

from ..conftest import flushed_redis_url, fresh_amqp_vhost
from .worker_harness import CommandProcess

AMQP_VHOST = "celery-rpc-backend"
#: The Redis database this module may use (flushed before use).
REDIS_DB = 12
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.amqp


def client(url: str, **conf) -> Celery:
    return Celery("client", broker=url, backend="rpc://", **conf)


def act_as_worker(backend: RPCBackend, items: list[tuple[str, str, object, Context]]) -> None:
    """Store ``(task id, state, value, request)`` items as a worker's flusher does: metas made
    with the request, published in one batch on a loop of its own."""

    async def publish() -> None:
        try:
            await backend._aset_many([
                (tid, backend.encode(backend.prepare_meta(tid, state, value, None, req)), state)
                for tid, state, value, req in items])
        finally:
            await backend.aclose()

    asyncio.run(publish())


# -- configuration (no server) ----------------------------------------------------------------


def test_rpc_needs_an_amqp_broker_and_refuses_chords_and_saved_groups():
    redis_app = Celery("t", broker="redis://localhost/0", backend="rpc://")
    with pytest.raises(ImproperlyConfigured, match=r"rpc:// result backend needs an AMQP broker"):
        redis_app.backend  # noqa: B018
    with pytest.raises(ImproperlyConfigured, match=r"needs an AMQP broker URL in broker_url"):
        backend_for_url("rpc://", Celery("t").conf)
    app = Celery("t", broker="amqp://guest:guest@localhost:5672/v", backend="rpc://",
                 result_persistent=True, result_expires=60)
    try:
        backend = app.backend
        assert isinstance(backend, RPCBackend) and backend.as_uri() == "rpc://"
        assert backend.oid == app.oid and backend.delivery_mode == 2
        assert backend.replies._arguments == {"x-expires": 60_000}
        with pytest.raises(NotImplementedError, match='"rpc" result backend does not support'):
            backend.ensure_chords_allowed()
        with pytest.raises(NotImplementedError, match="save_group is not supported"):
            backend.save_group("g", None)
        assert Celery("u", broker="pyamqp://h//").oid != app.oid  # one reply queue per app

        # Where a state goes: the request's reply_to; its correlation_id when the request
        # is the task's own (a chain storing a later step's state passes its own request).
        backend.prepare_meta("a", states.STARTED, None, None,
                             Context(id="a", reply_to="q1", correlation_id="corr-a"))
        backend.prepare_meta("b", states.FAILURE, None, None,
                             Context(id="a", reply_to="q1", correlation_id="corr-a"))
        backend.prepare_meta("c", states.SUCCESS, 1, None, Context(id="c", reply_to="x" * 300))
        backend.prepare_meta("d", states.SUCCESS, 1, None, Context(id="d"))
        assert dict(backend._destinations) == {"a": ("q1", "corr-a"), "b": ("q1", "b")}
        asyncio.run(backend._aset_many([("c", b"{}", "SUCCESS"), ("d", b"{}", "SUCCESS")]))
        assert type(backend_for_url("rpc://", app.conf, reply_to="x")) is RPCBackend
    finally:
        app.close()
        redis_app.close()


# -- the wire, as upstream (no worker) --------------------------------------------------------


def test_replies_go_out_and_come_back_in_upstreams_form(amqp_url, caplog):
    """The reply queue has upstream's flags (a declaration with them matches), a reply is a
    message to it on the default exchange with the task id as correlation_id, the meta as
    JSON body and result_persistent's delivery mode; the client reads replies published by
    an upstream worker (kombu's form) too, and drops a malformed one with a log line."""
    import aio_pika

    app = client(amqp_url, result_persistent=True)
    worker = client(amqp_url, result_persistent=True)
    try:
        app.backend.prepare_sender()  # what the first send does: the queue exists now
        tid = "2f4e2b8a-0000-4000-8000-000000000001"
        req = Context(id=tid, reply_to=app.oid, correlation_id=tid, group="g1")
        act_as_worker(worker.backend, [(tid, states.STARTED, {"pid": 1}, req),
                                       (tid, states.SUCCESS, 42, req)])

        async def inspect() -> list[aio_pika.abc.AbstractIncomingMessage]:
            async with await aio_pika.connect(amqp_url) as conn:
                channel = await conn.channel()
                queue = await channel.declare_queue(app.oid, durable=True, auto_delete=True,
                                                    arguments={"x-expires": 86_400_000})
                got = [await queue.get(no_ack=False, timeout=5) for _ in range(2)]
                for message in got:
                    await message.reject(requeue=True)
                return got

        started, done = asyncio.run(inspect())
        for message in (started, done):
            assert message.correlation_id == tid and message.routing_key == app.oid
            assert message.exchange == "" and message.delivery_mode == 2
            assert message.content_type == "application/json"
            assert message.content_encoding == "utf-8"
        body = json.loads(done.body)
        assert body["status"] == "SUCCESS" and body["result"] == 42 and body["task_id"] == tid
        assert body["group_id"] == "g1" and body["children"] == [] and body["date_done"]
        assert json.loads(started.body)["status"] == "STARTED"

        # Read back (the requeued messages): the final state wins, read twice from the cache.
        assert app.backend.get_task_meta(tid)["result"] == 42
        assert app.AsyncResult(tid).get(timeout=5) == 42
        assert app.AsyncResult(tid).get(timeout=5) == 42

        async def upstream_worker_replies() -> None:
            async with await aio_pika.connect(amqp_url) as conn:
                channel = await conn.channel()
                meta = {"task_id": "up-1", "status": "FAILURE", "traceback": "Traceback...",
                        "result": {"exc_type": "KeyError", "exc_message": ["k"],
                                   "exc_module": "builtins"}, "children": [], "date_done": None}
                for body, ctype in ((b"{not json", "application/json"),
                                    (json.dumps(meta).encode(), "application/json")):
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, content_type=ctype, content_encoding="utf-8",
                                         correlation_id="up-1"), routing_key=app.oid)

        with caplog.at_level(logging.ERROR, logger="celery.backends.rpc_replies"):
            asyncio.run(upstream_worker_replies())
            result = app.AsyncResult("up-1")
            with pytest.raises(KeyError):
                result.get(timeout=5)
        assert result.traceback == "Traceback..."
        dropped = [r for r in caplog.records if "Dropped a message" in r.getMessage()]
        assert len(dropped) == 1, caplog.text

        result.forget()
        assert app.backend.replies.latest("up-1") is None
    finally:
        app.close()
        worker.close()


# -- a real worker process --------------------------------------------------------------------


class WorkerProcess(CommandProcess):
    """``celery -A rpcapp worker`` on ``url``, results to ``backend``."""

    def __init__(self, url: str, backend: str, cwd: Path) -> None:
        env = dict(os.environ, RPCAPP_BROKER=url, RPCAPP_BACKEND=backend)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "tests" / "apps"), str(ROOT), env.get("PYTHONPATH")]))
        env.pop("CELERY_ASYNCIO_WORKER_PROCESS", None)
        super().__init__([sys.executable, "-m", "celery", "-A", "rpcapp", "worker", "-l", "INFO",
                          "--sync-workers", "4"], cwd=cwd, env=env)
        self.wait_for_line(" ready: consuming")

    def close(self) -> None:
        code = self.stop()
        assert code == 0, self.output
        # Failing tasks log their tracebacks; nothing else may go wrong.
        for bad in ("Unexpected error", "CRITICAL", "unreachable", "Dropped a message"):
            assert bad not in self.output, self.output


@pytest.fixture(scope="module")
def worker_url(tmp_path_factory) -> Iterator[str]:
    """One fresh vhost and one rpc:// worker for the worker tests of this module."""
    url = fresh_amqp_vhost(AMQP_VHOST + "-worker")
    proc = WorkerProcess(url, "rpc://", tmp_path_factory.mktemp("rpcworker"))
    try:
        yield url
    finally:
        proc.close()


def record_arrivals(app: Celery) -> list[tuple[str, str]]:
    """``(task id, status)`` of every reply the app's consumer takes in, in order."""
    seen: list[tuple[str, str]] = []
    replies = app.backend.replies
    arrived = replies.arrived

    def spy(task_id: str, meta: dict) -> None:
        seen.append((task_id, meta["status"]))
        arrived(task_id, meta)

    replies.arrived = spy  # type: ignore[method-assign]
    return seen


def test_a_real_worker_answers_results_failures_and_retries_in_order(worker_url):
    app = client(worker_url)
    try:
        seen = record_arrivals(app)
        ok = app.send_task("rpc.add", (2, 3))
        assert ok.get(timeout=10) == 5 and ok.get(timeout=1) == 5 and ok.state == "SUCCESS"
        assert asyncio.run(app.send_task("rpc.aadd", (4, 5)).aget(timeout=10)) == 9

        failed = app.send_task("rpc.fail", ("it broke",))
        with pytest.raises(Exception, match="it broke") as info:
            failed.get(timeout=10)
        assert type(info.value).__name__ == "Boom"
        assert failed.state == "FAILURE" and "Boom: it broke" in failed.traceback

        retried = app.send_task("rpc.flaky", (2,))
        assert retried.get(timeout=20) == 2
        # Every state the worker stored reached the sender, in the order it was stored.
        assert [s for tid, s in seen if tid == ok.id] == ["STARTED", "SUCCESS"]
        assert [s for tid, s in seen if tid == failed.id] == ["STARTED", "FAILURE"]
        assert [s for tid, s in seen if tid == retried.id] == [
            "STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS"]
        # A late interim state (a redelivery, a RETRY stored after the next run's result)
        # never replaces a final one.
        app.backend.replies.arrived(retried.id, {"status": "RETRY", "result": None})
        assert app.backend.get_task_meta(retried.id)["status"] == "SUCCESS"

        # Expired before it ran: the worker stores REVOKED (no task runs; the reply goes
        # to the message's reply_to all the same).
        expired = app.send_task("rpc.add", (1, 1), expires=-1)
        with pytest.raises(TaskRevokedError):
            expired.get(timeout=10)
        assert expired.state == "REVOKED"

        slow = app.send_task("rpc.sleep", (0.8,))
        begun = time.monotonic()
        with pytest.raises(TimeoutError, match="The operation timed out"):
            slow.get(timeout=0.2)
        assert time.monotonic() - begun < 5
        deadline = time.monotonic() + 10
        while slow.state != "STARTED" and time.monotonic() < deadline:  # task_track_started
            time.sleep(0.02)
        assert slow.state in ("STARTED", "SUCCESS")
        assert slow.get(timeout=10) == 0.8

        with pytest.raises(NotImplementedError, match="does not support chords"):
            (group(app.signature("rpc.add", (1, 1))) | app.signature("rpc.add", (1,))).delay()
    finally:
        app.close()


def test_many_concurrent_results_reach_their_own_client_sync_and_async(worker_url):
    one, two = client(worker_url), client(worker_url)
    try:
        ones = [one.send_task("rpc.add", (i, 0)) for i in range(150)]
        twos = [two.send_task("rpc.add", (i, 1000)) for i in range(150)]
        answers: dict[str, list[int]] = {}

        def read_sync() -> None:
            answers["one"] = [r.get(timeout=30) for r in ones]

        reader = threading.Thread(target=read_sync)
        reader.start()

        async def read_async() -> list[int]:
            return list(await asyncio.gather(*(r.aget(timeout=30) for r in twos)))

        answers["two"] = asyncio.run(read_async())
        reader.join(40)
        assert answers["one"] == list(range(150))
        assert answers["two"] == [i + 1000 for i in range(150)]
        # Neither client heard of the other's tasks.
        assert all(two.backend.replies.latest(r.id) is None for r in ones)
        assert all(one.backend.replies.latest(r.id) is None for r in twos)
        assert group(one.signature("rpc.add", (i, i)) for i in range(5))().get(timeout=10) == [
            0, 2, 4, 6, 8]
    finally:
        one.close()
        two.close()


def close_connections(vhost: str) -> int:
    """Close every connection to ``vhost`` from the server side (this module's vhosts only);
    how many there were."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "vhost"],
                            capture_output=True, text=True, timeout=60).stdout
    subprocess.run(["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "rpc test"],
                   check=True, capture_output=True, timeout=60)
    return sum(line.strip() == vhost for line in listed.splitlines())


def test_replies_flow_again_after_the_connections_are_dropped(tmp_path):
    """The server closes every connection (the client's, the worker's): both reconnect by
    themselves, the reply queue is declared and consumed again, and new replies arrive."""
    vhost = f"{AMQP_VHOST}-drop"
    url = fresh_amqp_vhost(vhost)
    proc = WorkerProcess(url, "rpc://", tmp_path)
    app = client(url)
    try:
        assert app.send_task("rpc.add", (1, 2)).get(timeout=10) == 3
        assert close_connections(vhost) >= 3  # the client's, the worker's consumer and replies
        results = [app.send_task("rpc.add", (i, 2)) for i in range(10)]
        assert [r.get(timeout=30) for r in results] == [i + 2 for i in range(10)]
        assert asyncio.run(app.send_task("rpc.aadd", (2, 2)).aget(timeout=30)) == 4
    finally:
        app.close()
        assert proc.stop() == 0, proc.output


# -- other result backends beside an AMQP broker ----------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_sqlite_and_redis_results_beside_an_amqp_broker(kind, tmp_path):
    url = fresh_amqp_vhost(f"{AMQP_VHOST}-{kind}")
    backend = (f"db+sqlite:///{tmp_path}/results.db" if kind == "sqlite"
               else flushed_redis_url(REDIS_DB))
    proc = WorkerProcess(url, backend, tmp_path)
    app = Celery("client", broker=url, backend=backend)
    try:
        results = [app.send_task("rpc.add", (i, 1)) for i in range(20)]
        assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(20)]
        assert asyncio.run(app.send_task("rpc.aadd", (1, 2)).aget(timeout=20)) == 3
        with pytest.raises(Exception, match="bad") as info:
            app.send_task("rpc.fail", ("bad",)).get(timeout=20)
        assert type(info.value).__name__ == "Boom"
    finally:
        app.close()
        proc.close()
