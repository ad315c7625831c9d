"""Signals to a real worker process: a warm shutdown finishes running tasks; a second signal
cancels them and requeues their messages, so nothing acknowledged is lost."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import valkey

from celery import Celery
from tests.conftest import flushed_redis_url
from tests.faults.procs import wait_until
from tests.integration.worker_harness import CommandProcess

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 10


@pytest.fixture
def url():
    return flushed_redis_url(REDIS_DB)


@pytest.fixture
def app(url):
    app = Celery("producer", broker=url, backend=url, set_as_current=False)
    yield app
    app.close()


def start_worker(url: str, *extra: str) -> CommandProcess:
    """A worker process of tests/apps/signalapp.py, once it says it is ready."""
    env = dict(os.environ, SIGNALAPP_URL=url, PYTHONPATH=str(ROOT))
    proc = CommandProcess(
        [sys.executable, "-m", "celery", "-A", "tests.apps.signalapp", "worker", "-l", "info",
         *extra], cwd=ROOT, env=env)
    proc.wait_for_line(" ready", timeout=20)
    return proc


def started(client: valkey.Valkey) -> int:
    """How many tasks said they started (tests/apps/signalapp.py)."""
    return client.llen("sig:started")


def test_sigterm_finishes_running_tasks_and_requeues_unstarted(url, app):
    client = valkey.Valkey.from_url(url)
    running = [app.send_task("sig.held_async") for _ in range(2)]
    worker = start_worker(url, "--loop-workers=1", "--loop-concurrency=2", "--sync-workers=1",
                          "--prefetch-multiplier=2")
    waiting = [app.send_task("sig.held_async") for _ in range(4)]
    # the 2 first run; the window (2 slots x 2 + 1 x 2 = 6) holds the rest
    wait_until(lambda: started(client) == 2 and client.llen("celery") == 0, 30,
               "2 tasks running and 4 prefetched")
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_line("Warm shutdown", timeout=15)
    client.set("sig:release", 1)  # the running ones end; the worker starts no other
    assert worker.wait(15) == 0, worker.output
    assert [r.get(timeout=5) for r in running] == ["released", "released"]
    assert [r.state for r in waiting] == ["PENDING"] * 4
    assert client.llen("celery") == 4 and client.hlen("unacked") == 0
    assert started(client) == 2


def test_second_signal_cancels_running_tasks_and_requeues_them(url, app):
    client = valkey.Valkey.from_url(url)
    worker = start_worker(url, "--loop-workers=1", "--sync-workers=1")
    results = [app.send_task("sig.slow_async", (30,)), app.send_task("sig.held_sync")]
    # both are running now (acked early, as Celery does by default)
    wait_until(lambda: started(client) == 2, 30, "both tasks to start")
    assert client.hlen("unacked") == 0 and client.llen("celery") == 0
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_line("Warm shutdown", timeout=15)
    worker.proc.send_signal(signal.SIGINT)
    assert worker.wait(15) == 0, worker.output
    # both messages are back in the queue, nothing was lost and nothing was stored
    assert client.llen("celery") == 2
    assert [r.state for r in results] == ["PENDING", "PENDING"]
    assert worker.count("Cold shutdown")
    # and a new worker runs them to completion from the queue
    client.set("sig:release", 1)
    worker2 = start_worker(url, "--loop-workers=1", "--sync-workers=1")
    try:
        assert results[1].get(timeout=15) == "released"
    finally:
        worker2.proc.send_signal(signal.SIGTERM)
        worker2.wait_for_line("Warm shutdown", timeout=15)  # two pending SIGTERMs would merge
        worker2.proc.send_signal(signal.SIGTERM)
        assert worker2.wait(15) == 0, worker2.output
    assert client.llen("celery") == 1  # the cancelled 30 s task is back again


def test_cold_shutdown_requeues_sync_tasks_waiting_for_a_thread_unacked(url, app):
    """One sync thread, three sync tasks: one runs, two wait in the thread executor (not
    started, not acked). A cold shutdown before the warm one has requeued them returns all
    three to the queue, once each; nothing is stored, nothing stays in ``unacked``."""
    client = valkey.Valkey.from_url(url)
    worker = start_worker(url, "--loop-workers=1", "--sync-workers=1")
    results = [app.send_task("sig.held_sync") for _ in range(3)]
    # the two waiting ones are acked only when they start
    wait_until(lambda: started(client) == 1 and client.llen("celery") == 0
               and client.hlen("unacked") == 2, 30, "one task running, two waiting unacked")
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.send_signal(signal.SIGINT)
    assert worker.wait(15) == 0, worker.output
    queued = [json.loads(m)["headers"]["id"] for m in client.lrange("celery", 0, -1)]
    assert sorted(queued) == sorted(r.id for r in results)
    assert client.hlen("unacked") == 0
    assert [r.state for r in results] == ["PENDING"] * 3
    assert started(client) == 1
