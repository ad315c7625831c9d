"""A real ``celery -A amqpapp worker`` on RabbitMQ (amqp://), results on SQLite.

* def and async def tasks, countdown, priorities (``task_queue_max_priority``), and
  malformed messages dead-lettered (a DLX policy on the vhost) while the worker goes on;
* acks_late + kill -9: the unacked messages are redelivered and run again (counted);
* SIGTERM: prefetched, unstarted messages go back to the queue at once, not when the
  running task ends;
* RabbitMQ restarted mid-run (``rabbitmqctl stop_app``/``start_app``): the worker reconnects
  by itself, nothing acknowledged is lost, a publish while the broker is down raises
  OperationalError after the retries.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import time
from pathlib import Path

import pytest

from celery import Celery
from celery.exceptions import OperationalError
from tests.conftest import fresh_amqp_vhost
from tests.faults.procs import Worker, wait_until

pytestmark = pytest.mark.amqp

AMQP_VHOST = "celery-amqp-worker"
OPTIONS = ("--loop-workers=1", "--loop-concurrency=4", "--sync-workers=2")


def _env(url: str, tmp_path: Path, *, acks_late: bool = False,
         max_priority: int | None = None) -> dict[str, str]:
    return {"AMQPAPP_BROKER": url, "AMQPAPP_BACKEND": f"db+sqlite:///{tmp_path}/results.db",
            "AMQPAPP_LOG": str(tmp_path / "executions.log"),
            "AMQPAPP_ACKS_LATE": "1" if acks_late else "0",
            "AMQPAPP_MAX_PRIORITY": str(max_priority or "")}


def _client(env: dict[str, str], **conf: object) -> Celery:
    app = Celery("amqp-client", broker=env["AMQPAPP_BROKER"], backend=env["AMQPAPP_BACKEND"],
                 set_as_current=False, **conf)
    if env["AMQPAPP_MAX_PRIORITY"]:
        app.conf.task_queue_max_priority = int(env["AMQPAPP_MAX_PRIORITY"])
    return app


def _log(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "executions.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _ends(tmp_path: Path) -> collections.Counter[str]:
    return collections.Counter(parts[1] for parts in _log(tmp_path) if parts[0] == "end")


def _run(coro):
    return asyncio.run(coro)


async def _publish_raw(url: str, *messages: tuple[bytes, dict]) -> None:
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        for body, props in messages:
            await channel.default_exchange.publish(aio_pika.Message(body, **props), "celery")


async def _ready_count(url: str, queue: str) -> int:
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


def _dead_letter_setup(url: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "set_policy", "-p", AMQP_VHOST, "dlx", "^celery$",
                    '{"dead-letter-exchange":"dlx"}', "--apply-to", "queues"],
                   check=True, capture_output=True, timeout=60)

    async def declare() -> None:
        import aio_pika

        conn = await aio_pika.connect(url)
        async with conn:
            channel = await conn.channel()
            exchange = await channel.declare_exchange("dlx", "fanout")
            queue = await channel.declare_queue("dead-letter")
            await queue.bind(exchange)

    _run(declare())


def test_tasks_countdown_priorities_and_malformed_messages(tmp_path: Path) -> None:
    url = fresh_amqp_vhost(AMQP_VHOST)
    _dead_letter_setup(url)
    # acks_late: the body that does not decode is rejected after its FAILURE is stored
    # (with early acks it was acked as it started, as upstream's are)
    env = _env(url, tmp_path, acks_late=True, max_priority=10)
    client = _client(env)
    try:
        # Priorities: queued before any worker runs, so the server orders them.
        low = [client.send_task("amqp.sync", (f"low{i}",), priority=1) for i in range(4)]
        high = client.send_task("amqp.sync", ("high",), priority=9)
        # Malformed: not JSON, an unknown content type, an unknown task, no task headers.
        headers = {"lang": "py", "task": "amqp.sync", "id": "bad-body", "argsrepr": "",
                   "kwargsrepr": "", "origin": "test"}
        _run(_publish_raw(
            url,
            (b"{not json", {"content_type": "application/json", "content_encoding": "utf-8",
                            "headers": headers, "delivery_mode": 2}),
            (b"[[], {}, {}]", {"content_type": "application/x-unknown",
                               "content_encoding": "utf-8",
                               "headers": dict(headers, id="bad-type"), "delivery_mode": 2}),
            (b"[[], {}, {}]", {"content_type": "application/json", "content_encoding": "utf-8",
                               "headers": dict(headers, task="no.such.task", id="bad-task")}),
            (b"hello", {"content_type": "text/plain"}),
        ))
        worker = Worker(env, "--loop-workers=1", "--loop-concurrency=1", "--sync-workers=1",
                        "--prefetch-multiplier=8", cwd=tmp_path, app="amqpapp").wait_ready()
        try:
            assert [r.get(timeout=30) for r in low + [high]] == \
                [f"sync:low{i}" for i in range(4)] + ["sync:high"]
            starts = [p[2] for p in _log(tmp_path) if p[0] == "start"]
            assert starts[0] == "high", starts
            priorities = {p[2]: p[3] for p in _log(tmp_path) if p[0] == "start"}
            assert priorities["high"] == "9" and priorities["low0"] == "1"
            # def and async def tasks, a countdown; the worker consumes after the bad ones.
            sent = time.time()
            later = client.send_task("amqp.async", ("later",), countdown=1.5)
            results = [client.send_task("amqp.async" if i % 2 else "amqp.sync", (f"t{i}",))
                       for i in range(20)]
            assert [r.get(timeout=30) for r in results] == \
                [f"{'async' if i % 2 else 'sync'}:t{i}" for i in range(20)]
            assert later.get(timeout=30) == "async:later"
            assert time.time() - sent >= 1.4
            try:
                wait_until(lambda: _run(_ready_count(url, "dead-letter")) == 4, 20,
                           "the malformed messages to be dead-lettered")
            except AssertionError:
                raise AssertionError(f"{_run(_ready_count(url, 'dead-letter'))} dead letters:\n"
                                     f"{worker.output}") from None
            assert _run(_ready_count(url, "celery")) == 0
        finally:
            worker.stop(30)
        output = worker.output
        assert "unregistered task of type 'no.such.task'" in output
        assert "bad-type" in output and "application/x-unknown" in output
        assert "bad-body" in output
        assert "Traceback" not in output, output
    finally:
        client.close()


def test_acks_late_kill_9_redelivers_unacked_messages(tmp_path: Path) -> None:
    url = fresh_amqp_vhost(AMQP_VHOST)
    env = _env(url, tmp_path, acks_late=True)
    client = _client(env)
    try:
        ids = [client.send_task("amqp.sync" if i % 2 else "amqp.async", (f"k{i}", 0.3)).id
               for i in range(30)]
        first = Worker(env, *OPTIONS, cwd=tmp_path, app="amqpapp").wait_ready()
        wait_until(lambda: len(_ends(tmp_path)) >= 5, 30, "some tasks to end")
        first.kill()
        started_unfinished = {p[1] for p in _log(tmp_path) if p[0] == "start"} - set(_ends(tmp_path))
        second = Worker(env, *OPTIONS, cwd=tmp_path, app="amqpapp").wait_ready()
        try:
            wait_until(lambda: set(_ends(tmp_path)) >= set(ids), 60, "every task to end")
        finally:
            second.stop(30)
        ends = _ends(tmp_path)
        redelivered = collections.Counter(p[1] for p in _log(tmp_path)
                                          if p[0] == "start" and p[4] == "1")
        assert started_unfinished, "the kill caught no task running"
        for task_id in started_unfinished:  # cut off by the kill: ran again, redelivered
            assert redelivered[task_id] >= 1, task_id
        # at least once, and every extra run came from a redelivered message
        assert all(ends[i] >= 1 for i in ids)
        assert all(ends[i] - 1 <= redelivered[i] for i in ids)
        assert _run(_ready_count(url, "celery")) == 0
    finally:
        client.close()


def test_sigterm_returns_prefetched_messages_at_once(tmp_path: Path) -> None:
    url = fresh_amqp_vhost(AMQP_VHOST)
    env = _env(url, tmp_path)
    client = _client(env)
    try:
        for i in range(10):
            client.send_task("amqp.sync", (f"s{i}", 4.0))
        worker = Worker(env, "--loop-workers=1", "--loop-concurrency=1", "--sync-workers=1",
                        "--prefetch-multiplier=4", cwd=tmp_path, app="amqpapp").wait_ready()
        wait_until(lambda: any(p[0] == "start" for p in _log(tmp_path)), 20, "a task to start")
        wait_until(lambda: _run(_ready_count(url, "celery")) <= 6, 10, "the worker to prefetch")
        worker.signal(15)
        # Back in the queue while the running task still has seconds to go.
        wait_until(lambda: _run(_ready_count(url, "celery")) == 9, 2.5,
                   "the prefetched messages to be returned")
        assert worker.proc.poll() is None
        worker.wait_stopped(30)
        assert [p[2] for p in _log(tmp_path) if p[0] == "end"] == ["s0"]
    finally:
        client.close()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def test_rabbitmq_restart_mid_run(tmp_path: Path) -> None:
    """One restart (it disturbs every other RabbitMQ user on this machine: kept to one)."""
    url = fresh_amqp_vhost(AMQP_VHOST)
    env = _env(url, tmp_path, acks_late=True)
    client = _client(env, task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                                     "interval_step": 0.2, "interval_max": 0.2})
    worker = Worker(env, *OPTIONS, cwd=tmp_path, app="amqpapp").wait_ready()
    try:
        before = [client.send_task("amqp.sync", (f"b{i}", 0.2)).id for i in range(20)]
        wait_until(lambda: len(_ends(tmp_path)) >= 3, 30, "some tasks to end")
        _rabbitmqctl("stop_app")
        try:
            started = time.monotonic()
            with pytest.raises(OperationalError, match="failed after 3 attempt"):
                client.send_task("amqp.sync", ("down",))
            assert time.monotonic() - started < 30
        finally:
            _rabbitmqctl("start_app")
        after = [client.send_task("amqp.async", (f"a{i}",)).id for i in range(10)]
        wait_until(lambda: set(_ends(tmp_path)) >= set(before + after), 90,
                   "every task sent before and after the restart to end")
        assert _run(_ready_count(url, "celery")) == 0
        assert worker.proc.poll() is None  # it reconnected by itself
    finally:
        worker.stop(30)
        client.close()
