"""Warm and cold shutdowns of real worker processes with def and async def tasks in flight:
nothing lost, nothing run to completion twice (issue 20, item 5 and the fault suite)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from celery import Celery

from .brokers import make_broker
from .conftest import scaled
from .procs import Executions, Worker, faultapp_env, wait_until

OPTIONS = ("--loop-workers=1", "--loop-concurrency=4", "--sync-workers=2",
           "--prefetch-multiplier=2")


def producer(url: str) -> Celery:
    return Celery("producer", broker=url, backend=url, set_as_current=False)


def test_cold_shutdown_exits_promptly_and_never_runs_a_def_task_twice(tmp_path: Path):
    """Two 6 s def tasks running; SIGTERM then SIGTERM: the worker exits at once (it used to
    wait for them, and they ran again from their requeued messages), neither reports an
    outcome, and a new worker runs each once."""
    broker = make_broker("redis", tmp_path)
    log = tmp_path / "executions.log"
    env = faultapp_env(broker.url, broker.url, log)
    app = producer(broker.url)
    try:
        worker = Worker(env, *OPTIONS).wait_ready()
        results = [app.send_task("fault.sync", (6,)) for _ in range(2)]
        wait_until(lambda: sum(Executions.read(log).starts.values()) == 2, 10, "both to start")
        worker.signal(signal.SIGTERM)
        time.sleep(1.0)  # the warm shutdown now waits for the running tasks
        worker.signal(signal.SIGTERM)
        worker.wait_stopped(3)  # promptly: the tasks had 4 s to go
        assert "Cold shutdown: requeueing fault.sync" in worker.output
        assert [r.state for r in results] == ["PENDING", "PENDING"]
        assert broker.stored() == 2
        again = Worker(env, *OPTIONS).wait_ready()
        try:
            assert [r.get(timeout=20) for r in results] == [6, 6]
        finally:
            again.stop()
        runs = Executions.read(log)
        ids = [r.id for r in results]
        assert [runs.ends[i] for i in ids] == [1, 1] and [runs.starts[i] for i in ids] == [2, 2]
        assert [runs.reported[i] for i in ids] == [1, 1]
    finally:
        app.close()


@pytest.mark.parametrize("acks_late", [True, False], ids=["acks_late", "early_ack"])
@pytest.mark.parametrize("how", ["warm", "cold"])
def test_shutdowns_with_tasks_in_flight_lose_and_duplicate_nothing(
        how: str, acks_late: bool, tmp_path: Path, report):
    """Def and async def tasks, some running, some prefetched, when the worker is stopped
    (warm: SIGTERM; cold: SIGTERM twice) at a random moment, again and again; then a last
    worker drains the queue. Every task is reported exactly once. After a warm shutdown every
    task also ran to its end once; a cold one abandons the def tasks it requeues, and one
    whose function happens to return before the process is gone ran to its end twice
    (reported once: counted as ``abandoned_then_ended``)."""
    rng = random.Random()
    broker = make_broker("redis", tmp_path)
    log = tmp_path / "executions.log"
    env = faultapp_env(broker.url, broker.url, log, acks_late=acks_late)
    app = producer(broker.url)
    runs, sent = scaled(3, 10), scaled(60, 400)
    try:
        results = [app.send_task(rng.choice(("fault.sync", "fault.async")), (0.2,))
                   for _ in range(sent)]
        for _ in range(runs):
            worker = Worker(env, *OPTIONS).wait_ready()
            time.sleep(rng.uniform(0.3, 1.5))
            worker.signal(signal.SIGTERM)
            if how == "cold":
                time.sleep(rng.uniform(0.0, 0.3))
                worker.signal(signal.SIGTERM)
            worker.wait_stopped(30)
        last = Worker(env, *OPTIONS).wait_ready()
        try:
            for r in results:
                r.get(timeout=60)
        finally:
            last.stop()
    finally:
        app.close()
    executions = Executions.read(log)
    ids = [r.id for r in results]
    lost, twice = executions.lost(ids), executions.reported_twice(ids)
    ended_twice = executions.duplicated(ids)
    report(runs=runs + 1, sent=sent, lost=len(lost), duplicated=len(twice),
           abandoned_then_ended=len(ended_twice),
           restarted=sum(executions.starts[i] - 1 for i in ids))
    assert not lost and not twice
    if how == "warm":
        assert not ended_twice
    assert broker.stored() == 0
