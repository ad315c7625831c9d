"""Live interoperability with upstream Celery 5.x over the same RabbitMQ virtual host.

Upstream Celery runs from the throwaway venv of test_upstream_interop.py. Both directions:
upstream client -> our worker (ours declares the queues first) and our client -> upstream
worker (upstream declares them first), each with the default ``celery`` queue and a priority
queue on its own exchange (tests/compat/interop/upamqp.py, imported by both), so neither
side's declarations may fail with PRECONDITION_FAILED. Results go to Redis (db 13) or, in
their own test, to ``rpc://``; remote control is checked both ways with both workers on one
vhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..integration.worker_harness import CommandProcess, running_worker
from .test_upstream_interop import INTEROP_DIR, upstream_python  # noqa: F401 (fixture)

pytestmark = [pytest.mark.amqp, pytest.mark.redis, pytest.mark.upstream]

AMQP_VHOST = "celery-interop-tests"
REDIS_DB = 13
TIMEOUT = 30
QUEUES = "celery,interop.prio"


def _env(broker: str, backend: str) -> dict[str, str]:
    env = dict(os.environ, INTEROP_BROKER_URL=broker, INTEROP_BACKEND_URL=backend,
               PYTHONPATH=str(INTEROP_DIR), C_FORCE_ROOT="1")
    env.pop("CELERY_BROKER_URL", None)
    return env


@contextlib.contextmanager
def our_app(broker: str, backend: str) -> Iterator[Any]:
    """tests/compat/interop/upamqp.py imported by us, afresh, plus an ``async def`` task
    that only our worker has; closed and forgotten afterwards."""
    saved = {k: os.environ.get(k) for k in ("INTEROP_BROKER_URL", "INTEROP_BACKEND_URL")}
    os.environ.update(INTEROP_BROKER_URL=broker, INTEROP_BACKEND_URL=backend)
    sys.path.insert(0, str(INTEROP_DIR))
    sys.modules.pop("upamqp", None)
    try:
        module = importlib.import_module("upamqp")
        app = module.app

        @app.task(name="interop.mul_async")
        async def mul_async(x, y):
            await asyncio.sleep(0.01)
            return x * y

        try:
            yield app
        finally:
            app.close()
    finally:
        sys.path.remove(str(INTEROP_DIR))
        sys.modules.pop("upamqp", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def upstream_worker(python: Path, broker: str, backend: str) -> Iterator[CommandProcess]:
    """An upstream Celery worker (threads pool) consuming both queues of upamqp, ready (its
    queues declared) on enter; stopped on exit, and its log checked for declaration errors."""
    worker = CommandProcess(
        [str(python), "-m", "celery", "-A", "upamqp", "worker", "-P", "threads", "-c", "2",
         "-l", "info", "-n", "upstream@%h", "-Q", QUEUES, "--without-gossip", "--without-mingle"],
        cwd=INTEROP_DIR, env=_env(broker, backend))
    try:
        worker.wait_for_line(" ready.")
        yield worker
    finally:
        worker.stop()
    assert "PRECONDITION_FAILED" not in worker.output, worker.output[-3000:]


def run_upstream(python: Path, args: list[str], broker: str, backend: str) -> str:
    proc = subprocess.run([str(python), *args], cwd=INTEROP_DIR, env=_env(broker, backend),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def check_failure(state: str, kind: str, args: list, traceback: str | None, origin: str) -> None:
    """A failure's exception type, arguments and the worker's traceback came through."""
    assert (state, kind, args) == ("FAILURE", "ValueError", [f"from {origin}"])
    assert traceback is not None and traceback.startswith("Traceback (most recent call last)")
    assert "upamqp.py" in traceback and f"ValueError: from {origin}" in traceback


def test_upstream_client_and_our_worker(upstream_python, amqp_url, redis_url):  # noqa: F811
    with our_app(amqp_url, redis_url) as app:
        with running_worker(app, queues=QUEUES.split(","), loop_workers=1, sync_workers=2,
                            hostname="ours@test"):
            out = json.loads(run_upstream(upstream_python, ["amqp_producer.py", "--async"],
                                          amqp_url, redis_url))
    assert out["add"] == 5
    assert out["async"] == 42
    fail = out["fail"]
    check_failure(fail["state"], fail["type"], fail["args"], fail["traceback"], "upstream")
    assert out["echo"] == {"id": out["echo_id"], "args": [1, "two"], "kwargs": {"k": [3]},
                           "root_id": out["echo_id"]}
    assert out["prio"] == {"value": "p", "routing_key": "interop.prio", "priority": 7}
    assert out["retry"] == 2
    assert out["countdown"]["value"] == 8 and out["countdown"]["seconds"] >= 1.4


def test_our_client_and_upstream_worker(upstream_python, amqp_url, redis_url):  # noqa: F811
    with upstream_worker(upstream_python, amqp_url, redis_url) as worker, \
            our_app(amqp_url, redis_url) as app:
        add = app.tasks["interop.add"]
        assert add.delay(20, 22).get(timeout=TIMEOUT) == 42
        failed = app.tasks["interop.fail"].delay("from us")
        with pytest.raises(ValueError, match="from us"):
            failed.get(timeout=TIMEOUT)
        check_failure(failed.state, type(failed.result).__name__, list(failed.result.args),
                      failed.traceback, "us")
        r = app.send_task("interop.echo_request", (1, "two"), {"k": [3]})
        assert r.get(timeout=TIMEOUT) == {"id": r.id, "args": [1, "two"], "kwargs": {"k": [3]},
                                          "root_id": r.id}
        assert app.tasks["interop.prio_echo"].apply_async(("p",), priority=7).get(
            timeout=TIMEOUT) == {"value": "p", "routing_key": "interop.prio", "priority": 7}
        assert app.tasks["interop.retry"].delay(2).get(timeout=TIMEOUT) == 2
        started = time.monotonic()
        assert add.apply_async((4, 4), countdown=1.5).get(timeout=TIMEOUT) == 8
        assert time.monotonic() - started >= 1.4

        async def from_loop():
            return await (await add.adelay(5, 5))

        assert asyncio.run(from_loop()) == 10
    # the only traceback upstream logged is the one we asked for
    output = worker.output
    assert output.count("Traceback") == 1 and "ValueError: from us" in output, output[-3000:]


#: Run by upstream Celery: ping and inspect every worker on the vhost, print the replies.
UPSTREAM_CONTROL = """
import json
from upamqp import app
print(json.dumps({"ping": app.control.ping(timeout=2.0),
                  "active_queues": app.control.inspect(timeout=2.0).active_queues()}))
"""


def _by_node(replies: list[dict]) -> dict:
    """app.control.ping()'s list of one-entry dicts as one dict; a node answering twice fails."""
    merged: dict = {}
    for reply in replies:
        assert len(reply) == 1 and not set(reply) & set(merged), replies
        merged.update(reply)
    return merged


def test_remote_control_both_ways(upstream_python, amqp_url, redis_url):  # noqa: F811
    with upstream_worker(upstream_python, amqp_url, redis_url), \
            our_app(amqp_url, redis_url) as app, \
            running_worker(app, queues=QUEUES.split(","), loop_workers=1, sync_workers=1,
                           hostname="ours@test"):
        cli = json.loads(run_upstream(
            upstream_python, ["-m", "celery", "-A", "upamqp", "inspect", "ping", "-j"],
            amqp_url, redis_url))
        theirs = json.loads(run_upstream(upstream_python, ["-c", UPSTREAM_CONTROL],
                                         amqp_url, redis_url))
        ours = _by_node(app.control.ping(timeout=2.0))
        registered = app.control.inspect(timeout=2.0).registered()
    upstream_node = next(n for n in cli if n.startswith("upstream@"))
    both = {"ours@test": {"ok": "pong"}, upstream_node: {"ok": "pong"}}
    assert cli == both
    assert _by_node(theirs["ping"]) == both
    assert ours == both
    for node in both:
        assert sorted(q["name"] for q in theirs["active_queues"][node]) == sorted(
            QUEUES.split(","))
    assert "interop.add" in registered[upstream_node]
    assert "interop.mul_async" in registered["ours@test"]


#: Run by upstream Celery with the rpc:// backend: results come back to this process only.
UPSTREAM_RPC = """
import json
from upamqp import app
ok = app.send_task("interop.add", (2, 3))
bad = app.send_task("interop.fail", ("from upstream",))
bad.get(timeout=30, propagate=False)
print(json.dumps({"add": ok.get(timeout=30), "fail": [bad.state, type(bad.result).__name__,
                  list(bad.result.args), bad.traceback]}))
"""


def test_rpc_results_both_ways(upstream_python, amqp_url):  # noqa: F811
    rpc = "rpc://"
    with our_app(amqp_url, rpc) as app, \
            running_worker(app, queues=QUEUES.split(","), loop_workers=1, sync_workers=2,
                           hostname="ours@test"):
        out = json.loads(run_upstream(upstream_python, ["-c", UPSTREAM_RPC], amqp_url, rpc))
    assert out["add"] == 5
    check_failure(*out["fail"], "upstream")
    with upstream_worker(upstream_python, amqp_url, rpc), our_app(amqp_url, rpc) as app:
        results = [app.tasks["interop.add"].delay(i, i) for i in range(5)]
        failed = app.tasks["interop.fail"].delay("from us")
        # read out of order: each result still finds its own reply
        assert [r.get(timeout=TIMEOUT) for r in reversed(results)] == [8, 6, 4, 2, 0]
        with pytest.raises(ValueError, match="from us"):
            failed.get(timeout=TIMEOUT)
        check_failure(failed.state, type(failed.result).__name__, list(failed.result.args),
                      failed.traceback, "us")
