"""The ``celery`` command line against the real Redis: call, purge, status, result, worker."""

from __future__ import annotations

import base64
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

REDIS_DB = 6
ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.cliapp"
ADD = "tests.apps.cliapp.add"

pytestmark = pytest.mark.redis


def cli_env(redis_url: str) -> dict[str, str]:
    """The environment for a CLI process: tests.apps.cliapp on ``redis_url``, and none of
    the variables the CLI reads as option defaults (APP, BROKER_URL...)."""
    env = {**os.environ, "CLIAPP_BROKER": redis_url, "CLIAPP_BACKEND": redis_url}
    for name in ("APP", "BROKER_URL", "RESULT_BACKEND", "CONFIG_MODULE", "CELERY_BROKER_URL"):
        env.pop(name, None)
    return env


def run_cli(
    redis_url: str, *args: str, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m celery -A tests.apps.cliapp ARGS`` with broker and backend on ``redis_url``."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, *args],
        cwd=ROOT,
        env=cli_env(redis_url),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def client(redis_url: str):
    conn = valkey.Valkey.from_url(redis_url)
    yield conn
    conn.close()


def queued(client: valkey.Valkey, queue: str = "celery") -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_call_puts_a_protocol_v2_message_on_the_queue(redis_url: str, client) -> None:
    proc = run_cli(redis_url, "call", ADD, "--args", "[2, 3]", "--kwargs", "{}")
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip()
    assert client.llen("celery") == 1
    (message,) = queued(client)
    assert message["headers"]["task"] == ADD
    assert message["headers"]["id"] == task_id
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([2, 3], {})


def test_call_honours_queue_and_countdown(redis_url: str, client) -> None:
    proc = run_cli(redis_url, "call", ADD, "-a", "[1, 1]", "--queue", "other", "--countdown", "30")
    assert proc.returncode == 0, proc.stderr
    assert client.llen("celery") == 0
    (message,) = queued(client, "other")
    assert message["headers"]["eta"]


def test_purge_force_empties_the_queue_and_reports_the_count(redis_url: str, client) -> None:
    for _ in range(3):
        assert run_cli(redis_url, "call", ADD, "-a", "[1, 2]").returncode == 0
    assert client.llen("celery") == 3
    proc = run_cli(redis_url, "purge", "-f")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Purged 3 messages from 1 known task queue."
    assert client.llen("celery") == 0


def test_purge_asks_first_and_keeps_messages_when_refused(redis_url: str, client) -> None:
    assert run_cli(redis_url, "call", ADD, "-a", "[1, 2]").returncode == 0
    refused = run_cli(redis_url, "purge", input="n\n")
    assert refused.returncode != 0
    assert client.llen("celery") == 1
    accepted = run_cli(redis_url, "purge", input="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "Purged 1 message from 1 known task queue." in accepted.stdout
    assert client.llen("celery") == 0


def test_purge_only_the_named_queues(redis_url: str, client) -> None:
    assert run_cli(redis_url, "call", ADD, "-a", "[1, 2]").returncode == 0
    assert run_cli(redis_url, "call", ADD, "-a", "[1, 2]", "--queue", "other").returncode == 0
    proc = run_cli(redis_url, "purge", "-f", "-Q", "other")
    assert proc.returncode == 0, proc.stderr
    assert client.llen("other") == 0 and client.llen("celery") == 1
    proc = run_cli(redis_url, "purge", "-f", "-Q", "celery,other", "-X", "celery")
    assert "No messages purged" in proc.stdout
    assert client.llen("celery") == 1


def test_status_without_workers_says_none_replied(redis_url: str) -> None:
    # As Celery's: exit 1 when no worker answers the ping (see test_remote_control.py for
    # the listing of live workers); the line says the broker itself was reachable.
    proc = run_cli(redis_url, "status", "--timeout", "0.3")
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"Error: No nodes replied within time constraint (broker {redis_url} is reachable)"]


def test_status_on_an_unreachable_broker_is_one_error_line(redis_url: str) -> None:
    proc = run_cli(redis_url, "-b", "redis://127.0.0.1:1/0", "status")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: broker redis://127.0.0.1:1/0")


def test_result_prints_a_stored_result(redis_url: str) -> None:
    app = Celery("storer", backend=redis_url, set_as_current=False)
    try:
        app.backend.store_result("t-ok", {"sum": [1, 2]}, "SUCCESS")
        app.backend.store_result(
            "t-bad",
            ValueError("boom"),
            "FAILURE",
            traceback="Traceback (most recent call last):\nValueError: boom",
        )
    finally:
        app.close()
    ok = run_cli(redis_url, "result", "t-ok")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"sum": [1, 2]}

    bad = run_cli(redis_url, "result", "t-bad")
    assert bad.returncode == 1
    assert "Error: task t-bad ended in state FAILURE: ValueError: boom" in bad.stderr
    tb = run_cli(redis_url, "result", "t-bad", "--traceback")
    assert tb.returncode == 0 and tb.stdout.strip().endswith("ValueError: boom")


def test_result_times_out_with_one_error_line(redis_url: str) -> None:
    proc = run_cli(redis_url, "result", "never-sent", "--timeout", "0.5")
    assert proc.returncode == 1
    assert "Error: task never-sent is not ready after 0.5 s (state PENDING)" in proc.stderr


def test_worker_runs_called_tasks_and_stops_cleanly_on_sigterm(redis_url: str) -> None:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP,
            "worker",
            "-l",
            "info",
            "--sync-workers",
            "2",
            "-n",
            "cli@%h",
        ],
        cwd=ROOT,
        env=cli_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            output.append(line)
            if " ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(20), "".join(output)
        sent = run_cli(redis_url, "call", ADD, "--args", "[20, 22]")
        task_id = sent.stdout.strip()
        got = run_cli(redis_url, "result", task_id, "--timeout", "10")
        assert got.returncode == 0, got.stderr + "".join(output)
        assert got.stdout.strip() == "42"
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0, "".join(output)
        assert time.monotonic() - started < 10
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        reader.join(5)
    text = "".join(output)
    assert "cli@" in text and "1 loop worker × 100 + 2 sync workers" in text
    assert ADD in text
