"""``celery worker --processes N`` against real processes, on SQLite and on Redis: every
process consumes, each answers remote control under its own node name, one killed is
started again, SIGTERM stops all warmly with nothing lost, and one that cannot start makes
the supervisor give up with one error line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import app_module, flushed_redis_url
from .worker_harness import CommandProcess

ROOT = Path(__file__).resolve().parents[2]
#: A database no other test module uses (bench/canvas.py's; flushed before each test).
REDIS_DB = 13
#: Small windows: each process holds at most 2 messages, so the tasks spread over both.
OPTIONS = ("--loop-workers", "0", "--sync-workers", "2", "--prefetch-multiplier", "1")


class Supervised(CommandProcess):
    """``celery -A procapp worker --processes N`` in a process of its own; output kept."""

    def __init__(self, data: Path, url: str, *options: str, env: dict[str, str] | None = None
                 ) -> None:
        full_env = dict(os.environ, PROCAPP_DIR=str(data), PROCAPP_BROKER=url, **(env or {}))
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "tests" / "apps"), str(ROOT), full_env.get("PYTHONPATH")]))
        full_env.pop("CELERY_ASYNCIO_WORKER_PROCESS", None)
        super().__init__(
            [sys.executable, "-m", "celery", "-A", "procapp", "worker", "-l", "INFO", *OPTIONS,
             *options], cwd=data, env=full_env)


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry))
    return out


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    return "sqlite" if request.param == "sqlite" else flushed_redis_url(REDIS_DB)


@pytest.fixture
def app(url, tmp_path, monkeypatch):
    monkeypatch.setenv("PROCAPP_BROKER", url)
    monkeypatch.setenv("PROCAPP_DIR", str(tmp_path))
    with app_module("procapp") as procapp:
        yield procapp


@pytest.fixture
def queue() -> str:
    """A queue of this test's own: other checkouts' workers may share the Redis database."""
    return f"procs-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def two(url, app, tmp_path, queue) -> Iterator[Supervised]:
    name = f"procs-{uuid.uuid4().hex[:6]}@%h"
    worker = Supervised(tmp_path, url, "--processes", "2", "-n", name, "-Q", queue)
    try:
        worker.wait_for_line(" ready: consuming", count=2)
        yield worker
    finally:
        code = worker.stop()
        assert code == 0, worker.output
        assert "Traceback" not in worker.output, worker.output


def runs(data: Path, event: str) -> list[tuple[int, int]]:
    """(task number, pid) of each ``event`` ("start", "end") procapp's tasks logged."""
    path = data / "runs.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(n), int(pid)) for name, n, pid in map(str.split, lines) if name == event]


def send(app, queue: str, name: str, *args: object):
    return app.tasks[name].apply_async(args, queue=queue)


def test_both_processes_consume_under_their_own_node_names(app, two, queue):
    parent = two.proc.pid
    results = [send(app, queue, "proc.slow", n, 0.2) for n in range(12)]
    pids = {pid for _, pid in (r.get(timeout=60) for r in results)}
    assert len(pids) == 2 and parent not in pids
    assert pids == children_of(parent)
    banner = two.output.split("\n", 1)[0]
    assert "procs-" in banner and "-1@" in banner and "-2@" in banner


def test_each_process_answers_remote_control(url, app, two, tmp_path):
    if url == "sqlite":
        pytest.skip("the SQLite broker carries no remote control")
    first = two.output.split(" v", 1)[0].split(", ")
    assert len(first) == 2 and all(n.startswith("procs-") for n in first)
    deadline = time.monotonic() + 20
    while True:  # both are ready, but a first broadcast may come before they subscribed
        replies = app.control.ping(first, timeout=1.0)
        if len(replies) == 2 or time.monotonic() > deadline:
            break
    assert sorted(name for reply in replies for name in reply) == sorted(first)
    env = dict(os.environ, PROCAPP_DIR=str(tmp_path), PROCAPP_BROKER=url,
               PYTHONPATH=str(ROOT / "tests" / "apps"))
    ping = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "procapp", "inspect", "ping", "-d", ",".join(first)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ping.returncode == 0, ping.stderr
    assert all(f"->  {name}: OK" in ping.stdout for name in first), ping.stdout


def test_a_killed_process_is_started_again_and_tasks_keep_flowing(app, two, queue):
    before = children_of(two.proc.pid)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    two.wait_for_line("was killed by SIGKILL; starting it again")
    two.wait_for_line(" ready: consuming", count=3)
    after = children_of(two.proc.pid)
    assert victim not in after and len(after) == 2
    # Both run tasks. How a burst splits between them is up to their fetching (an idle
    # SQLite worker polls), so bursts go until each has run some, for 30 s at most.
    pids: set[int] = set()
    deadline = time.monotonic() + 30
    while pids != after and time.monotonic() < deadline:
        results = [send(app, queue, "proc.slow", n, 0.2) for n in range(12)]
        pids |= {pid for _, pid in (r.get(timeout=60) for r in results)}
    assert pids == after


def test_sigterm_stops_every_process_warmly_and_loses_nothing(url, app, tmp_path, queue):
    worker = Supervised(tmp_path, url, "--processes", "2", "-Q", queue)
    try:
        worker.wait_for_line(" ready: consuming", count=2)
        results = [send(app, queue, "proc.slow", n, 2.0) for n in range(10)]
        deadline = time.monotonic() + 30
        while len({pid for _, pid in runs(tmp_path, "start")}) < 2:  # both processes are busy
            assert time.monotonic() < deadline, worker.output
            time.sleep(0.05)
        started = {n for n, _ in runs(tmp_path, "start")}
        assert worker.stop() == 0, worker.output
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert worker.output.count("Warm shutdown") == 2
    assert {n for n, _ in runs(tmp_path, "end")} >= started  # every task that started finished
    for n in started:
        assert results[n].get(timeout=10)[0] == n
    # The rest are still queued: a new worker runs them, each once.
    again = Supervised(tmp_path, url, "--processes", "2", "-Q", queue)
    try:
        assert sorted(r.get(timeout=60)[0] for r in results) == list(range(10))
    finally:
        assert again.stop() == 0, again.output
    assert sorted(n for n, _ in runs(tmp_path, "end")) == list(range(10))


def test_processes_stop_when_the_supervisor_is_killed(url, app, tmp_path, queue):
    worker = Supervised(tmp_path, url, "--processes", "2", "-Q", queue)
    worker.wait_for_line(" ready: consuming", count=2)
    children = children_of(worker.proc.pid)
    worker.proc.kill()
    worker.wait()
    worker.wait_for_line("shut down after", count=2)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, worker.output
        time.sleep(0.05)
    assert worker.output.count("is gone: warm shutdown") == 2


def test_a_process_that_cannot_start_makes_the_supervisor_give_up(tmp_path, queue):
    # Nothing listens on port 1, and the app does not retry at start.
    worker = Supervised(tmp_path, "redis://127.0.0.1:1/0", "--processes", "2", "-Q", queue,
                        env={"PROCAPP_RETRY": "0"})
    code = worker.wait(120)
    assert code == 1, worker.output
    last = worker.output.strip().splitlines()[-1]
    assert last.startswith("Error: worker process ") and "before it was ready, 3 times" in last
    assert "starting it again" in worker.output


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_bad_process_counts_are_refused(value, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "worker", f"--processes={value}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Invalid value for '--processes'" in proc.stderr and "'auto'" in proc.stderr


def test_remote_shutdown_stops_every_process_and_the_supervisor(url, app, tmp_path, queue):
    if url == "sqlite":
        pytest.skip("the SQLite broker carries no remote control")
    name = f"procs-{uuid.uuid4().hex[:6]}@%h"
    worker = Supervised(tmp_path, url, "--processes", "2", "-n", name, "-Q", queue)
    try:
        worker.wait_for_line(" ready: consuming", count=2)
        nodes = worker.output.split(" v", 1)[0].split(", ")
        deadline = time.monotonic() + 20
        while len(app.control.ping(nodes, timeout=1.0)) < 2:
            assert time.monotonic() < deadline, worker.output
        app.control.broadcast("shutdown", destination=nodes)
        assert worker.wait() == 0, worker.output
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert worker.output.count("stopped by itself (remote shutdown)") == 2
    assert "; starting it again" not in worker.output
