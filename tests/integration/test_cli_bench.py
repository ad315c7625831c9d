"""``celery bench`` end to end: a real worker process on the default SQLite broker, on Redis,
and in-process on memory://; JSON and human output, clean-up, one-line errors."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from celery import Celery
from tests.conftest import flushed_redis_url
from tests.integration.cli_helpers import app_env, processes_mentioning

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.benchapp_cli"
REDIS_DB = 5


def bench_env(broker: str | None = None, backend: str | None = None) -> dict[str, str]:
    return app_env("BENCHAPP", broker, backend)


def run_bench(cwd: Path, *args: str, env: dict[str, str] | None = None,
              global_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, *global_args, "bench", "--sync-workers", "2",
         *args],
        cwd=cwd, env=env or bench_env(), capture_output=True, text=True, timeout=60,
    )


def assert_sane_report(report: dict[str, Any], tasks: int) -> None:
    assert report["tasks"] == report["finished"] == tasks
    assert report["failed"] == 0
    assert report["elapsed_s"] > 0 and report["throughput_per_s"] > 0
    lat = [report[f"latency_{name}_ms"] for name in ("p50", "p90", "p99", "max")]
    assert 0 <= lat[0] <= lat[1] <= lat[2] <= lat[3], lat
    assert report["queue"].startswith("celery-bench-")
    assert report["purged"] == 0  # every task ran: nothing was left to purge
    assert report["workload"]["async_tasks"] == report["workload"]["sync_tasks"] == tasks // 2


def assert_worker_gone(report: dict[str, Any]) -> None:
    pid = report["worker"]["pid"]
    assert pid and not Path(f"/proc/{pid}").exists()
    assert processes_mentioning(report["queue"]) == []


def sqlite_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_bench_json_on_the_default_sqlite_broker(tmp_path: Path) -> None:
    # 1,000 tasks so the worker's CPU time shows in /proc's 10 ms ticks (200 could read 0).
    proc = run_bench(tmp_path, "--tasks", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""  # one JSON object, nothing else
    report = json.loads(proc.stdout)
    assert_sane_report(report, 1000)
    assert report["broker"] == "sqlite:///celery-broker.db"
    assert report["result_backend"] == "db+sqlite:///bench-results.db"
    assert report["latency_measures"] == "send to result received"
    assert report["cpu_per_task_us"] > 0
    assert report["worker"] | {"pid": None} == {
        "mode": "process", "pid": None, "loop_workers": 1, "loop_concurrency": 100,
        "sync_workers": 2, "prefetch_multiplier": 4,
        "task_events": False}
    assert_worker_gone(report)
    app = Celery("check", broker=f"sqlite:///{tmp_path}/celery-broker.db", set_as_current=False)
    try:
        assert app.portal.call(app.transport.queue_length(report["queue"])) == 0
    finally:
        app.close()
    with sqlite3.connect(tmp_path / "celery-broker.db") as db:
        rows = db.execute("SELECT id, reserved_at, deliveries FROM celery_messages").fetchall()
    assert rows == []  # a publish cancelled mid-write landed before the purge
    assert sqlite_rows(tmp_path / "bench-results.db", "celery_taskmeta") == 0  # deleted


def test_bench_human_output_has_a_progress_bar_and_a_summary(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--tasks", "200", "--io-ms", "1", "--cpu-ms", "0.5",
                     "--payload-bytes", "100")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "celery bench: 200 tasks: 100 async (sleep 1 ms) + 100 sync (0.5 ms CPU)" in out
    assert "  broker   sqlite:///celery-broker.db" in out
    assert re.search(r"\[#{40}\] 200/200 +\d+ tasks/s", out), out
    assert re.search(r"tasks +200 finished \(0 failed\) in [\d.]+ s", out)
    assert re.search(r"throughput +\d+ tasks/s", out)
    assert re.search(r"latency +p50 [\d.]+ ms +p90 [\d.]+ ms +p99 [\d.]+ ms +max [\d.]+ ms", out)
    assert re.search(r"worker CPU +\d+ µs per task", out)
    queue = re.search(r"queue +(celery-bench-\d+) purged \(0 messages still waiting\)", out)
    assert queue, out
    pid = int(re.search(r"worker +pid (\d+)", out).group(1))
    assert not Path(f"/proc/{pid}").exists() and processes_mentioning(queue.group(1)) == []


def test_ctrl_c_stops_the_worker_and_purges_the_queue(tmp_path: Path) -> None:
    # faulthandler: a bench that hangs is made to print every thread's stack (SIGABRT below).
    # Started as from a terminal, whose Ctrl-C reaches Python's default handler: a suite run
    # in the background of a shell passes its children SIGINT ignored (POSIX), and Python
    # then keeps it ignored, so the SIGINT below did nothing and the bench ran on.
    terminal = ("import runpy, signal, sys; "
                "signal.signal(signal.SIGINT, signal.default_int_handler); sys.argv[0] = 'celery'; "
                "runpy.run_module('celery', run_name='__main__', alter_sys=True)")
    bench = subprocess.Popen(
        [sys.executable, "-c", terminal, "-A", APP, "bench", "--tasks", "100000",
         "--io-ms", "1", "--sync-workers", "1"],
        cwd=tmp_path, env={**bench_env(), "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert bench.stdout is not None
        header = ""
        while "worker   pid" not in header:
            line = bench.stdout.readline()
            assert line, bench.stderr.read() if bench.stderr else ""
            header += line
        pid = int(re.search(r"worker +pid (\d+)", header).group(1))
        queue = re.search(r"queue +(celery-bench-\d+)", header).group(1)
        time.sleep(1.5)  # tasks flowing, the queue full of waiting ones
        bench.send_signal(signal.SIGINT)
        try:
            out, err = bench.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            bench.send_signal(signal.SIGABRT)  # faulthandler prints where each thread is
            out, err = bench.communicate(timeout=10)
            pytest.fail(f"the bench did not end within 30 s of SIGINT; its threads:\n{err}")
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 1, out + err
    assert err.strip().splitlines() == [
        f"Error: interrupted: the worker stopped; queue {queue} purged"], err
    assert not Path(f"/proc/{pid}").exists() and processes_mentioning(queue) == []
    with sqlite3.connect(tmp_path / "celery-broker.db") as db:
        rows = db.execute("SELECT id, reserved_at, deliveries FROM celery_messages").fetchall()
    assert rows == []  # a publish cancelled mid-write landed before the purge
    assert sqlite_rows(tmp_path / "bench-results.db", "celery_taskmeta") == 0


def test_unreachable_broker_is_one_error_line(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--tasks", "10", "--json",
                     global_args=("-b", "redis://127.0.0.1:1/0"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: broker redis://127.0.0.1:1/0: unreachable ("), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_queue_of_the_app_is_refused(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--queue", "celery", "--json")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: --queue celery: that is one of the app's task queues")


def test_memory_broker_runs_the_worker_in_process(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--tasks", "200", "--json",
                     env=bench_env("memory://", "cache+memory://"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert_sane_report(report, 200)
    assert report["worker"]["mode"] == "thread" and report["cpu_per_task_us"] is None
    assert report["cpu_measures"].startswith("not measured")


@pytest.mark.redis
def test_bench_json_on_redis() -> None:
    url = flushed_redis_url(REDIS_DB)
    import valkey

    # Enough tasks for the worker's CPU time to show in /proc's 10 ms ticks (200 no-op
    # tasks can take under one tick: then 0 was read, and this failed now and then).
    proc = run_bench(ROOT, "--tasks", "1000", "--json", env=bench_env(url, url))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert_sane_report(report, 1000)
    assert report["broker"] == report["result_backend"] == url
    assert report["cpu_per_task_us"] > 0
    assert_worker_gone(report)
    client = valkey.Valkey.from_url(url)
    try:
        assert client.llen(report["queue"]) == 0
        assert client.keys("celery-task-meta-*") == []  # the bench deleted its results
    finally:
        client.close()


@pytest.mark.redis
def test_no_results_counts_completions_on_redis() -> None:
    url = flushed_redis_url(REDIS_DB)
    proc = run_bench(ROOT, "--tasks", "200", "--json", "--no-results", env=bench_env(url, url))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert_sane_report(report, 200)
    assert report["results"] == "not stored; completions counted"
    assert report["latency_measures"].startswith("send to task end")
    assert report["cpu_per_task_us"] > 0
    assert_worker_gone(report)


def test_options_the_mix_does_not_use_are_named(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--tasks", "20", "--mix", "0", "--io-ms", "5",
                     "--async-cpu-ms", "1", env=bench_env("memory://", "cache+memory://"))
    assert proc.returncode == 0, proc.stderr
    assert "note     --io-ms and --async-cpu-ms unused: --mix 0 sends no async tasks" in proc.stdout
    proc = run_bench(tmp_path, "--tasks", "20", "--mix", "1", "--cpu-ms", "1",
                     env=bench_env("memory://", "cache+memory://"))
    assert proc.returncode == 0, proc.stderr
    assert "note     --cpu-ms unused: --mix 1 sends no sync tasks" in proc.stdout
