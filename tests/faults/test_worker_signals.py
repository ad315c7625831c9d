"""Signals to a real worker process: a warm shutdown finishes running tasks; a second signal
cancels them and requeues their messages, so nothing acknowledged is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import valkey

from celery import Celery
from tests.conftest import flushed_redis_url

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


def start_worker(url: str, *extra: str) -> tuple[subprocess.Popen, threading.Event, list[str]]:
    env = dict(os.environ, SIGNALAPP_URL=url, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.apps.signalapp", "worker", "-l", "info", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready, lines = threading.Event(), []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if " ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(20), "".join(lines)
    return proc, ready, lines


def test_sigterm_finishes_running_tasks_and_requeues_unstarted(url, app):
    client = valkey.Valkey.from_url(url)
    running = [app.send_task("sig.slow_async", (1.0,)) for _ in range(2)]
    proc, _, lines = start_worker(url, "--loop-workers=1", "--loop-concurrency=2", "--sync-workers=1",
                                  "--prefetch-multiplier=2")
    waiting = [app.send_task("sig.slow_async", (1.0,)) for _ in range(4)]
    time.sleep(0.4)  # the 2 first run; the window (2 slots x 2 + 1 x 2 = 6) holds the rest
    assert client.llen("celery") == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, "".join(lines)
    assert [r.get(timeout=5) for r in running] == [1.0, 1.0]
    assert [r.state for r in waiting] == ["PENDING"] * 4
    assert client.llen("celery") == 4 and client.hlen("unacked") == 0
    assert any("Warm shutdown" in line for line in lines)


def test_second_signal_cancels_running_tasks_and_requeues_them(url, app):
    client = valkey.Valkey.from_url(url)
    proc, _, lines = start_worker(url, "--loop-workers=1", "--sync-workers=1")
    results = [app.send_task("sig.slow_async", (30,)), app.send_task("sig.slow_sync", (3,))]
    deadline = time.monotonic() + 10
    while client.llen("celery") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # both are running now (acked early, as Celery does by default)
    assert client.hlen("unacked") == 0 and client.llen("celery") == 0
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0, "".join(lines)
    # both messages are back in the queue, nothing was lost and nothing was stored
    assert client.llen("celery") == 2
    assert [r.state for r in results] == ["PENDING", "PENDING"]
    assert any("Cold shutdown" in line for line in lines)
    # and a new worker runs them to completion from the queue
    proc2, _, lines2 = start_worker(url, "--loop-workers=1", "--sync-workers=1")
    try:
        assert results[1].get(timeout=15) == 3
    finally:
        proc2.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # two pending SIGTERMs would merge into one
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(15) == 0, "".join(lines2)
    assert client.llen("celery") == 1  # the cancelled 30 s task is back again


def test_cold_shutdown_requeues_sync_tasks_waiting_for_a_thread_unacked(url, app):
    """One sync thread, three sync tasks: one runs, two wait in the thread executor (not
    started, not acked). A cold shutdown before the warm one has requeued them returns all
    three to the queue, once each; nothing is stored, nothing stays in ``unacked``."""
    client = valkey.Valkey.from_url(url)
    proc, _, lines = start_worker(url, "--loop-workers=1", "--sync-workers=1")
    results = [app.send_task("sig.slow_sync", (5,)) for _ in range(3)]
    deadline = time.monotonic() + 10
    while client.llen("celery") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert client.llen("celery") == 0
    assert client.hlen("unacked") == 2  # the two waiting ones: acked only when they start
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0, "".join(lines)
    queued = [json.loads(m)["headers"]["id"] for m in client.lrange("celery", 0, -1)]
    assert sorted(queued) == sorted(r.id for r in results)
    assert client.hlen("unacked") == 0
    assert [r.state for r in results] == ["PENDING"] * 3
