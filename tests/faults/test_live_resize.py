"""Live resizing against real worker processes (issue 23 part 6): ``pool_grow``/
``pool_shrink`` under load lose and repeat no task, replies have upstream's shapes, bad
arguments get a one-line error and the worker goes on, ``--autoscale`` grows under a backlog
and shrinks when idle (on Redis, and on SQLite and the filesystem, which carry no remote
control), and with ``--processes`` each process answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from celery import Celery
from tests.conftest import flushed_redis_url

from .brokers import make_broker
from .procs import ROOT, Executions, Worker, faultapp_env, wait_until

#: This module's Redis database (flushed by each test).
REDIS_DB = 8
OPTIONS = ("--loop-workers=1", "--loop-concurrency=4", "--sync-workers=2")


@pytest.fixture
def redis(tmp_path: Path):
    """(broker url, executions log, faultapp env, producer app) on Redis db 8."""
    url = flushed_redis_url(REDIS_DB)
    log = tmp_path / "executions.log"
    env = faultapp_env(url, url, log)
    app = Celery("producer", broker=url, backend=url, set_as_current=False)
    try:
        yield url, log, env, app
    finally:
        app.close()


def node() -> str:
    return f"resize-{uuid.uuid4().hex[:8]}@test"


def ask(app: Celery, name: str, command: str, **arguments) -> dict:
    """One command to ``name``; its reply (upstream's shape: one ``{name: reply}``)."""
    replies = app.control.broadcast(command, arguments, destination=[name], reply=True,
                                    timeout=5)
    assert replies and len(replies) == 1 and list(replies[0]) == [name], replies
    return replies[0][name]


def pool_stats(app: Celery, name: str) -> dict:
    return ask(app, name, "stats")


@pytest.mark.parametrize("acks_late", [False, True], ids=["early_ack", "acks_late"])
def test_grow_and_shrink_under_load_lose_and_repeat_no_task(acks_late, redis, tmp_path, report):
    url, log, env, app = redis
    env = faultapp_env(url, url, log, acks_late=acks_late)
    name = node()
    worker = Worker(env, "-n", name, *OPTIONS, cwd=tmp_path).wait_ready()
    sent = 3000
    try:
        ids = [app.send_task("fault.sync" if n % 2 else "fault.async", (0.005,)).id
               for n in range(sent)]
        steps = [("pool_grow", 3, None, "pool will grow"),
                 ("pool_shrink", 4, None, "pool will shrink"),
                 ("pool_grow", 5, "loop", "loop concurrency will grow"),
                 ("pool_grow", 4, None, "pool will grow"),
                 ("pool_shrink", 8, "loop", "loop concurrency will shrink"),
                 ("pool_shrink", 2, None, "pool will shrink")]
        for command, n, kind, answer in steps:
            time.sleep(0.3)
            arguments = {"n": n} if kind is None else {"n": n, "pool": kind}
            assert ask(app, name, command, **arguments) == {"ok": answer}
        assert Executions.read(log).lost(ids), "every task ended before the last resize"
        stats = pool_stats(app, name)
        assert stats["pool"]["sync-workers"] == 3
        assert stats["pool"]["loop-concurrency"] == 1
        assert stats["pool"]["max-concurrency"] == 4
        assert stats["prefetch_count"] == 4 * 4  # the default multiplier × the new size
        wait_until(lambda: not Executions.read(log).lost(ids), 120, "every task to end")
    finally:
        worker.stop(60)
    executions = Executions.read(log)
    lost, twice = executions.lost(ids), executions.duplicated(ids)
    report(sent=sent, lost=len(lost), duplicated=len(twice), resizes=len(steps))
    assert not lost and not twice
    assert "Sync threads: 2 -> 5" in worker.output and "Sync threads: 5 -> 1" in worker.output


def test_app_control_and_the_cli_get_upstream_replies_and_bad_arguments_one_line_errors(
        redis, tmp_path):
    url, log, env, app = redis
    name = node()
    worker = Worker(env, "-n", name, *OPTIONS, cwd=tmp_path).wait_ready()
    try:
        assert app.control.pool_grow(2, destination=[name], reply=True, timeout=5) == [
            {name: {"ok": "pool will grow"}}]
        assert app.control.pool_shrink(1, destination=[name], reply=True, timeout=5) == [
            {name: {"ok": "pool will shrink"}}]
        assert pool_stats(app, name)["pool"]["sync-workers"] == 3
        assert "autoscaler" not in pool_stats(app, name)
        bad = [("pool_grow", {"n": -2}, "n must be at least 1, not -2"),
               ("pool_grow", {"n": "many"}, "n must be a whole number, not 'many'"),
               ("pool_shrink", {"n": 1.5}, "n must be a whole number, not 1.5"),
               ("pool_shrink", {"n": 4}, "the sync threads would be -1"),
               ("pool_grow", {"n": 1, "pool": "processes"}, "pool must be 'threads' or 'loop'"),
               ("pool_shrink", {"n": 4, "pool": "loop"}, "the loop concurrency would be 0"),
               ("autoscale", {"max": 4, "min": 1}, "autoscale is not enabled on this worker")]
        for command, arguments, message in bad:
            reply = ask(app, name, command, **arguments)
            assert list(reply) == ["error"] and message in reply["error"], reply
            assert "\n" not in reply["error"]
        assert app.control.ping(destination=[name], timeout=5) == [{name: {"ok": "pong"}}]
        assert pool_stats(app, name)["pool"]["sync-workers"] == 3  # nothing changed
        cli = cli_env(env)
        out = subprocess.run([sys.executable, "-m", "celery", "-A", "faultapp", "control",
                              "pool_grow", "2", "-d", name, "-t", "5"], env=cli, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [f"->  {name}: OK", "    pool will grow"]
        out = subprocess.run([sys.executable, "-m", "celery", "-A", "faultapp", "control",
                              "-d", name, "-t", "5", "pool_shrink", "--", "-5"], env=cli,
                             cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.splitlines() == [f"->  {name}: ERROR",
                                           "    n must be at least 1, not -5"], out
        assert pool_stats(app, name)["pool"]["sync-workers"] == 5
    finally:
        worker.stop(30)


def cli_env(env: dict[str, str]) -> dict[str, str]:
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "tests" / "apps"), str(ROOT), full.get("PYTHONPATH", "")])
    return full


def test_autoscale_grows_under_a_backlog_and_shrinks_when_idle(redis, tmp_path):
    url, log, env, app = redis
    name = node()
    worker = Worker(dict(env, AUTOSCALE_KEEPALIVE="1"), "-n", name, "--loop-workers=0",
                    "--autoscale=6,1", cwd=tmp_path).wait_ready()
    try:
        stats = pool_stats(app, name)
        assert stats["pool"]["sync-workers"] == 1
        assert stats["autoscaler"] == {"max": 6, "min": 1, "current": 1, "qty": 0}
        assert stats["prefetch_count"] == 4 * 6  # sized for max
        ids = [app.send_task("fault.sync", (0.3,)).id for _ in range(40)]
        wait_until(lambda: pool_stats(app, name)["pool"]["sync-workers"] == 6, 10,
                   "the pool to grow to max")
        wait_until(lambda: not Executions.read(log).lost(ids), 60, "every task to end")
        wait_until(lambda: pool_stats(app, name)["pool"]["sync-workers"] == 1, 10,
                   "the pool to shrink back to min")
        reply = ask(app, name, "pool_grow", n=1)
        assert "not supported with autoscale" in reply["error"]
        assert ask(app, name, "autoscale", max=3, min=2) == {"ok": "autoscale now max=3 min=2"}
        assert pool_stats(app, name)["pool"]["sync-workers"] == 2  # up to the new min at once
        for arguments, message in [({"max": 1, "min": 3}, "min (3) must not be greater than max (1)"),
                                   ({"max": -1, "min": 0}, "max must be at least 1"),
                                   ({"max": "x", "min": 0}, "max must be a whole number")]:
            reply = ask(app, name, "autoscale", **arguments)
            assert list(reply) == ["error"] and message in reply["error"], reply
        assert app.control.autoscale(4, 1, destination=[name], reply=True, timeout=5) == [
            {name: {"ok": "autoscale now max=4 min=1"}}]
    finally:
        worker.stop(30)
    executions = Executions.read(log)
    assert not executions.lost(ids) and not executions.duplicated(ids)
    assert "Autoscale: growing" in worker.output and "Autoscale: shrinking" in worker.output


@pytest.mark.parametrize("name", ["sqlite", "filesystem"])
def test_autoscale_on_a_broker_without_remote_control(name, tmp_path):
    broker = make_broker(name, tmp_path)
    log = tmp_path / "executions.log"
    env = faultapp_env(broker.url, broker.backend, log, polling_interval=0.05)
    app = Celery("producer", broker=broker.url, backend=broker.backend, set_as_current=False)
    worker = Worker(dict(env, AUTOSCALE_KEEPALIVE="1"), "--loop-workers=0", "--autoscale=4,0",
                    cwd=tmp_path).wait_ready()
    try:
        ids = [app.send_task("fault.sync", (0.1,)).id for _ in range(60)]
        wait_until(lambda: "Autoscale: growing to 4 " in worker.output, 20, "growth to max")
        wait_until(lambda: not Executions.read(log).lost(ids), 60, "every task to end")
        wait_until(lambda: "Autoscale: shrinking to 0 " in worker.output, 20, "shrinking to 0")
        more = [app.send_task("fault.sync", (0,)).id for _ in range(5)]  # grows again
        wait_until(lambda: not Executions.read(log).lost(more), 30, "the later tasks to end")
    finally:
        worker.stop(30)
        app.close()
    executions = Executions.read(log)
    assert not executions.duplicated(ids + more)


def test_each_process_of_a_supervised_worker_answers_and_resizes(redis, tmp_path):
    url, log, env, app = redis
    template = f"sup-{uuid.uuid4().hex[:6]}@test"
    worker = Worker(env, "-n", template, "--processes=2", *OPTIONS, cwd=tmp_path)
    try:
        wait_until(lambda: worker.output.count(" ready: consuming") >= 2, 60,
                   "both processes to consume")
        replies = app.control.pool_grow(3, reply=True, timeout=3)
        names = sorted(n for r in replies for n in r)
        assert len(names) == 2 and all(
            r == {n: {"ok": "pool will grow"}} for r in replies for n in r), replies
        for n in names:
            assert pool_stats(app, n)["pool"]["sync-workers"] == 5
        ids = [app.send_task("fault.sync", (0.001,)).id for _ in range(200)]
        wait_until(lambda: not Executions.read(log).lost(ids), 60, "every task to end")
    finally:
        worker.stop(60)
    assert not Executions.read(log).duplicated(ids)
