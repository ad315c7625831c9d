"""The broker goes away while the result backend stays (issue 27, item 7; the other way
round: test_backend_outage.py): the consumer's flusher puts the acks it could not write
back, retries them with a doubling backoff up to its cap while results go on being stored,
writes them once the broker is back (the task ran once, no redelivery), and a shutdown
names the acks it could not write, whose messages stay reserved for the restore. The
worker reaches Redis through the fault proxy; the checks go straight to it."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from pathlib import Path

import valkey

from celery import Celery
from celery.transport.redis import RedisTransport
from celery.worker import flusher
from tests.conftest import REDIS_PORT
from tests.integration.worker_harness import running_worker

from .brokers import REDIS_DB, make_broker
from .procs import wait_until
from .proxy import FaultProxy


def retry_delays(caplog) -> list[float]:
    """The delays the flusher said it would wait before trying the broker again."""
    return [float(m.group(1)) for r in caplog.records if r.name == "celery.worker.consumer"
            and (m := re.search(r"^Broker unreachable .* retrying in ([\d.]+)s$",
                                r.getMessage()))]


def test_acks_the_broker_refused_are_retried_with_backoff_and_written_once_it_is_back(
        tmp_path: Path, caplog, monkeypatch):
    monkeypatch.setattr(flusher, "MAX_BACKOFF", 0.2)
    monkeypatch.setattr(flusher, "DRAIN_TIMEOUT", 0.5)
    url = make_broker("redis", tmp_path).url
    raw = valkey.Valkey.from_url(url)
    proxy = FaultProxy(REDIS_PORT)
    app = Celery(f"acks{uuid.uuid4().hex[:8]}", broker=proxy.url(REDIS_DB), backend=url,
                 set_as_current=False, task_acks_late=True)
    runs: list[int] = []
    gate = threading.Event()

    @app.task(name="fault.gated")
    def gated(n: int) -> int:
        runs.append(n)
        gate.wait(10)
        return n

    def reserved(task_id: str) -> bool:
        return any(task_id.encode() in value for value in raw.hvals("unacked"))

    try:
        with caplog.at_level(logging.DEBUG, logger="celery.worker.consumer"), \
                running_worker(app, loop_workers=1, sync_workers=1):
            first = gated.delay(1)
            wait_until(lambda: runs == [1] and reserved(first.id), 10, "the first task to "
                       "start, its message recorded")  # (a record is retried for longer)
            proxy.down()
            gate.set()
            assert first.get(timeout=10) == 1  # the result is stored while the broker is away
            wait_until(lambda: len(retry_delays(caplog)) >= 3, 10, "three failed acks")
            assert retry_delays(caplog)[:3] == [0.1, 0.2, 0.2]  # doubling, capped
            assert reserved(first.id)  # not acked yet
            proxy.up()
            wait_until(lambda: not reserved(first.id) and "Broker reachable again" in
                       caplog.text, 10, "the ack once the broker is back")

            gate.clear()  # and one whose ack the worker still holds when it stops
            second = gated.delay(2)
            wait_until(lambda: runs == [1, 2] and reserved(second.id), 10,
                       "the second task to start, its message recorded")
            failures = len(retry_delays(caplog))
            proxy.down()
            gate.set()
            assert second.get(timeout=10) == 2
            wait_until(lambda: len(retry_delays(caplog)) > failures, 10, "a failed ack")
    finally:
        proxy.close()
        app.close()
    assert runs == [1, 2]  # each ran once: the first was not redelivered
    lost = [r.getMessage() for r in caplog.records if "not done" in r.getMessage()]
    assert len(lost) == 1 and "Shutdown with 1 acks/requeues/rejects not done" in lost[0]
    assert "redelivered after the visibility timeout" in lost[0]
    assert reserved(second.id) and not reserved(first.id)

    async def restore() -> int:
        transport = RedisTransport(url, transport_options={"visibility_timeout": 0})
        try:
            return await transport.restore_visible()
        finally:
            await transport.aclose()
            transport.close()

    assert asyncio.run(restore()) == 1  # what the worker could not ack comes back
    [back] = raw.lrange("celery", 0, -1)
    assert second.id.encode() in back
    raw.close()
