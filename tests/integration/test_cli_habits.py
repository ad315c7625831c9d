"""Celery users' worker command-line habits, with real processes on the SQLite broker:
--pidfile, --detach, celery multi, --purge, -X, --time-limit, -O fair, shell, report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery.bin.pidfile import pid_alive, read_pid
from celery.exceptions import TimeLimitExceeded

from ..conftest import app_module, stop_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def habits(tmp_path, monkeypatch):
    monkeypatch.setenv("HABITS_DIR", str(tmp_path))
    with app_module("habitsapp") as app:
        yield app, tmp_path


def celery(folder: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "habitsapp", *args],
                          cwd=folder, env=_env(folder), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 60), **kw)


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ, HABITS_DIR=str(folder),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "apps"), str(ROOT / "src")]))
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    return env


def start_worker(folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "habitsapp", "worker",
                             "--sync-workers=2", *args], cwd=folder, env=_env(folder),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_pidfile_is_exclusive_removed_at_exit_and_a_stale_one_replaced(habits):
    app, folder = habits
    pidfile = folder / "w.pid"
    pidfile.write_text("999999\n")  # stale: no such process
    first = start_worker(folder, f"--pidfile={pidfile}")
    try:
        assert wait_for(lambda: read_pid(str(pidfile)) == first.pid)
        second = celery(folder, "worker", f"--pidfile={pidfile}")
        assert second.returncode != 0
        assert (f"Error: The pidfile {pidfile} is held by the running process {first.pid}: "
                "is this worker already running?") in second.stderr
        assert app.tasks["habitsapp.add"].delay(2, 3).get(timeout=20) == 5
    finally:
        output = stop_process(first)
    assert first.returncode == 0, output
    assert not pidfile.exists()


def test_multi_starts_detached_workers_that_stop_by_their_pidfiles(habits):
    app, folder = habits
    started = celery(folder, "multi", "start", "2", "--pidfile=%n.pid",
                     "--logfile=logs/%n%I.log", "--sync-workers=1", "-l", "info")
    assert started.returncode == 0, started.stdout + started.stderr
    host = os.uname().nodename
    assert f"> celery1@{host}: OK" in started.stdout and f"> celery2@{host}: OK" in started.stdout
    pids = [read_pid(str(folder / f"celery{i}.pid")) for i in (1, 2)]
    try:
        assert all(pid is not None and pid_alive(pid) for pid in pids)
        results = [app.tasks["habitsapp.add"].delay(i, i) for i in range(6)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(6)]
        again = celery(folder, "multi", "start", "celery1", "--pidfile=%n.pid")
        assert f"> celery1@{host}: already running (pid {pids[0]})" in again.stdout
        names = celery(folder, "multi", "names", "2")
        assert names.stdout.split() == [f"celery1@{host}", f"celery2@{host}"]
        stopped = celery(folder, "multi", "stopwait", "2", "--pidfile=%n.pid")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert stopped.stdout.count(": stopped") == 2
        assert not any(pid_alive(pid) for pid in pids)
        assert not list(folder.glob("celery*.pid"))
        log = (folder / "logs" / "celery1.log").read_text()
        assert f"celery1@{host}" in log
    finally:
        for pid in pids:
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    refused = celery(folder, "multi", "start", "2", "-c:celery1", "4")
    assert refused.returncode == 2 and "options for one node" in refused.stderr


def test_detach_returns_and_a_worker_that_cannot_start_is_reported(habits):
    app, folder = habits
    (folder / "held.pid").write_text(f"{os.getpid()}\n")  # held by a running process
    bad = celery(folder, "worker", "--detach", "--logfile=bad.log", "--pidfile=held.pid")
    assert bad.returncode == 1 and "The detached worker exited at once with status" in bad.stderr
    assert "see bad.log" in bad.stderr
    assert "is this worker already running?" in (folder / "bad.log").read_text()
    good = celery(folder, "worker", "--detach", "--pidfile=d.pid", "--logfile=d.log")
    assert good.returncode == 0, good.stderr
    pid = read_pid(str(folder / "d.pid"))
    try:
        assert pid is not None and pid_alive(pid)
        assert os.getsid(pid) == pid  # a session of its own, no terminal
        assert app.tasks["habitsapp.add"].delay(1, 1).get(timeout=20) == 2
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            assert wait_for(lambda: not pid_alive(pid))
    assert not (folder / "d.pid").exists()


def test_purge_exclude_queues_time_limit_and_fair(habits):
    app, folder = habits
    add, nap = app.tasks["habitsapp.add"], app.tasks["habitsapp.nap"]
    doomed = [add.delay(1, 2) for _ in range(3)]
    other = add.apply_async((5, 5), queue="other")
    worker = start_worker(folder, "--purge", "-X", "other", "--time-limit=1", "-O", "fair")
    try:
        assert worker.stdout is not None
        purged = worker.stdout.readline()  # the purge runs before the worker starts
        assert purged == "Purged 3 messages from 1 queue (celery).\n", purged
        slow = nap.delay(5)
        with pytest.raises(TimeLimitExceeded):
            slow.get(timeout=20)
        assert add.delay(2, 2).get(timeout=20) == 4
        assert all(r.state == "PENDING" for r in doomed)  # purged before the worker started
        assert other.state == "PENDING"  # -X other: not consumed
    finally:
        stop_process(worker)
    rest = start_worker(folder, "-Q", "other")
    try:
        assert other.get(timeout=20) == 10
    finally:
        stop_process(rest)


def test_shell_command_and_report(habits):
    app, folder = habits
    ran = celery(folder, "shell", "-c", "print(add.name, app.main, sorted(k for k in dir() "
                                        "if k in ('chain', 'group', 'chord')))")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "habitsapp.add habitsapp ['chain', 'chord', 'group']"
    report = celery(folder, "report")
    assert report.returncode == 0 and "sqlite:///" in report.stdout


def test_sighup_restarts_the_worker_after_its_running_tasks(habits):
    app, folder = habits
    add, nap = app.tasks["habitsapp.add"], app.tasks["habitsapp.nap"]
    worker = start_worker(folder, "--pidfile=w.pid", "-l", "info")
    try:
        assert add.delay(1, 1).get(timeout=20) == 2
        running = nap.delay(1)
        time.sleep(0.3)  # (the nap is under way)
        worker.send_signal(signal.SIGHUP)
        assert running.get(timeout=20) == "woke"  # finished, not lost nor run twice
        assert add.delay(2, 3).get(timeout=30) == 5  # the restarted worker
        assert worker.poll() is None and read_pid(str(folder / "w.pid")) == worker.pid
    finally:
        output = stop_process(worker)
    assert worker.returncode == 0, output
    assert "SIGHUP: restarting: finishing running tasks" in output
    assert "worker: restarting:" in output


def test_sighup_to_the_supervisor_restarts_its_processes(habits):
    app, folder = habits
    add = app.tasks["habitsapp.add"]
    worker = start_worker(folder, "--processes=2", "-l", "info")
    seen: list[str] = []

    def wait_ready(count: int) -> None:  # each process logs "<node> ready: ..." last
        assert worker.stdout is not None
        while sum(" ready: consuming" in line for line in seen) < count:
            line = worker.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)

    try:
        wait_ready(2)
        assert add.delay(1, 1).get(timeout=30) == 2
        worker.send_signal(signal.SIGHUP)
        wait_ready(4)  # both started again
        assert [r.get(timeout=30) for r in [add.delay(i, 1) for i in range(4)]] == [1, 2, 3, 4]
        assert worker.poll() is None
    finally:
        output = "".join(seen) + stop_process(worker)
    assert worker.returncode == 0, output
    assert "supervisor: SIGHUP: restarting 2 worker processes" in output
    assert output.count("recycled; starting a new one") == 2, output
