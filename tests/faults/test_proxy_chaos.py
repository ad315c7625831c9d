"""acks_late tasks through a TCP proxy that drops, resets (in the middle of a command) and
stalls the worker's connections to Redis, broker and result backend alike: nothing is lost,
and every task that ran twice ran again from a redelivered message (its ack was cut off
before the visibility timeout gave the message back)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import valkey

from celery import Celery
from tests.conftest import REDIS_PORT

from .brokers import REDIS_DB, make_broker
from .conftest import scaled
from .procs import Executions, Worker, faultapp_env, wait_until
from .proxy import FaultProxy

VISIBILITY = 5


def test_acks_late_tasks_through_a_faulty_connection_lose_nothing(tmp_path: Path, report):
    broker = make_broker("redis", tmp_path)  # the producer and the checks go straight to Redis
    proxy = FaultProxy(REDIS_PORT, every=0.2, max_stall=1.5)
    via = proxy.url(REDIS_DB)
    log = tmp_path / "executions.log"
    env = faultapp_env(via, via, log, acks_late=True, visibility_timeout=VISIBILITY)
    app = Celery("producer", broker=broker.url, backend=broker.url, set_as_current=False)
    raw = valkey.Valkey.from_url(broker.url)
    sent, seconds = scaled(1000, 5000), scaled(8, 25)
    rng = random.Random()
    worker = Worker(env, "--loop-workers=1", "--loop-concurrency=20", "--sync-workers=4")
    try:
        worker.wait_ready()
        proxy.chaos(True)
        results = []
        for n in range(sent):  # a steady stream over ``seconds``, so the faults hit it all
            name = rng.choice(("fault.sync", "fault.async"))
            results.append(app.send_task(name, (0.002,)))
            if n % 25 == 24:
                time.sleep(seconds * 25 / sent)
        proxy.chaos(False)
        ids = [r.id for r in results]
        wait_until(lambda: not Executions.read(log).lost(ids), 120, "every task to end")
        # and every message settled: nothing queued, reserved or in a consumer's list
        wait_until(lambda: broker.stored() == 0 and not raw.keys("celery-asyncio.reserved.*"),
                   60, "every message to be acked")
        assert all(r.get(timeout=30) == 0.002 for r in results)
    finally:
        proxy.chaos(False)
        worker.stop(60)
        proxy.close()
        app.close()
        raw.close()
    executions = Executions.read(log)
    lost, twice = executions.lost(ids), executions.duplicated(ids)
    unaccounted = executions.unaccounted(ids)
    report(runs=1, sent=sent, lost=len(lost), duplicated=len(twice),
           unaccounted=len(unaccounted), faults=proxy.counts)
    assert sum(proxy.counts.values()) >= seconds  # the faults did happen
    assert not lost and not unaccounted
