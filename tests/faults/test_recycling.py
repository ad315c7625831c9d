"""--max-tasks-per-child / --max-memory-per-child: the worker process is replaced, no task is
lost or run twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import app_module, stop_process

ROOT = Path(__file__).resolve().parents[2]


def start_worker(tmp_path: Path, *options: str) -> subprocess.Popen[str]:
    env = dict(os.environ, RECYCLEAPP_DIR=str(tmp_path),
               PYTHONPATH=str(ROOT / "tests" / "apps") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("CELERY_ASYNCIO_WORKER_PROCESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-q", "-A", "recycleapp", "worker", "-l", "WARNING",
         "--loop-workers", "1", "--sync-workers", "2", *options],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("RECYCLEAPP_DIR", str(tmp_path))
    with app_module("recycleapp") as recycleapp:
        yield recycleapp


def stop(worker: subprocess.Popen[str]) -> str:
    out = stop_process(worker)
    assert worker.returncode == 0, out
    return out


def test_max_tasks_per_child_replaces_the_process_without_losing_or_repeating(app, tmp_path):
    worker = start_worker(tmp_path, "--max-tasks-per-child", "5")
    try:
        results = [app.tasks["recycle.whoami"].delay(n) for n in range(23)]
        got = [r.get(timeout=60) for r in results]
    finally:
        out = stop(worker)
    assert [n for n, _ in got] == list(range(23))
    pids = [pid for _, pid in got]
    assert len(set(pids)) >= 5  # 23 tasks, at most 5 per process
    assert all(pids.count(pid) <= 5 for pid in set(pids))
    runs = (tmp_path / "runs.log").read_text().split()
    assert sorted(map(int, runs)) == list(range(23))  # each ran exactly once
    assert "recycled" in out
    assert not any(Path(f"/proc/{pid}").exists() for pid in set(pids))


def test_max_memory_per_child_replaces_a_growing_process(app, tmp_path):
    # 150 MiB: well above a fresh worker (~50 MiB), reached after a dozen tasks of 8 MiB each
    worker = start_worker(tmp_path, "--max-memory-per-child", str(150 * 1024))
    try:
        got = []
        for n in range(40):  # one at a time, so that the worker sees its growth between tasks
            got.append(app.tasks["recycle.grow"].delay(n).get(timeout=60))
            time.sleep(0.02)
    finally:
        stop(worker)
    assert [n for n, _ in got] == list(range(40))
    assert len({pid for _, pid in got}) >= 2


def test_recycling_needs_the_app_by_name():
    from celery import Celery
    from celery.bin.celery import main

    app = Celery("noname", broker="memory://")
    with pytest.raises(SystemExit) as info:
        main(["worker", "--max-tasks-per-child", "3"], app=app)
    assert info.value.code != 0
