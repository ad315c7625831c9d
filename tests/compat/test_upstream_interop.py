"""Live interoperability with upstream Celery 5.x over the same Redis.

Upstream Celery runs from a throwaway venv (never one of our dependencies): by default
``.cache/upstream-celery`` in the repo, made on first use; ``UPSTREAM_CELERY_VENV`` points
elsewhere. Both directions are checked: our client -> upstream worker, and upstream client ->
our worker (including an ``async def`` task).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery import Celery
from celery.exceptions import TaskRevokedError
from tests.conftest import IN_CI, flushed_redis_url

from ..integration.worker_harness import running_worker

REDIS_DB = 12
ROOT = Path(__file__).resolve().parents[2]
INTEROP_DIR = Path(__file__).parent / "interop"
VENV = Path(os.environ.get("UPSTREAM_CELERY_VENV", ROOT / ".cache" / "upstream-celery"))
UPSTREAM_REQUIREMENT = "celery[redis]>=5.5,<6"


@functools.cache
def _free_threaded(python: str) -> bool:
    done = subprocess.run([python, "-c", "import sysconfig; "
                           "print(sysconfig.get_config_var('Py_GIL_DISABLED') == 1)"],
                          capture_output=True, text=True)
    return done.stdout.strip() == "True"


@functools.cache
def _venv_maker() -> str:
    """The interpreter the upstream venv is made with: a GIL build, as upstream Celery
    expects. On a free-threaded one (ci/ft-test.sh's pass), the ``python3`` on PATH if it
    has the GIL: some of the extras upstream tests add (cryptography's CFFI, psycopg's
    binary wheel) do not install on a free-threaded 3.13, and a venv made there first would
    fail the GIL pass's tests later."""
    if not _free_threaded(sys.executable):
        return sys.executable
    other = shutil.which("python3")
    return other if other and not _free_threaded(other) else sys.executable


def _upstream_python() -> Path:
    """The upstream venv's python, made on first use. A marker written after its install
    succeeded says it is whole, and what it was made with: one without it (an install that
    failed or was cut off), or made by a free-threaded python when a GIL one is at hand, is
    made again from scratch instead of being used half-built."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    maker = _venv_maker()
    want = f"{UPSTREAM_REQUIREMENT}\nfree-threaded: {_free_threaded(maker)}"
    if python.exists() and marker.exists() and marker.read_text() == want:
        return python
    try:
        if VENV.exists():
            shutil.rmtree(VENV)
        subprocess.run([maker, "-m", "venv", str(VENV)], check=True, capture_output=True)
        for attempt in (1, 2):  # once more after a failed download (PyPI, a busy cache)
            done = subprocess.run([str(python), "-m", "pip", "install", "-q",
                                   UPSTREAM_REQUIREMENT], capture_output=True, text=True,
                                  timeout=600)
            if done.returncode == 0:
                break
            if attempt == 2:
                raise subprocess.SubprocessError(
                    f"pip install {UPSTREAM_REQUIREMENT} failed twice: "
                    f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
        marker.write_text(want)
    except (subprocess.SubprocessError, OSError) as exc:
        message = f"could not make the upstream Celery venv at {VENV}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def upstream_python() -> Path:
    return _upstream_python()


@pytest.fixture
def url() -> str:
    return flushed_redis_url(REDIS_DB)


def _env(url: str) -> dict[str, str]:
    env = dict(os.environ, INTEROP_URL=url, PYTHONPATH=str(INTEROP_DIR), C_FORCE_ROOT="1")
    env.pop("CELERY_BROKER_URL", None)
    return env


def test_our_client_and_upstream_worker(upstream_python, url):
    worker = subprocess.Popen(
        [str(upstream_python), "-m", "celery", "-A", "upapp", "worker", "-P", "threads", "-c", "2",
         "-l", "warning", "-n", "upstream@%h", "--without-gossip", "--without-mingle"],
        cwd=INTEROP_DIR, env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    app = Celery("ours", broker=url, backend=url, set_as_current=False)

    @app.task(name="interop.add")
    def add(x, y):
        return x + y

    try:
        assert add.delay(20, 22).get(timeout=60) == 42
        assert app.send_task("interop.add", (1, 2), priority=5).get(timeout=30) == 3
        # compressed as kombu does: upstream's worker decompresses ours
        assert [app.send_task("interop.add", (n, 1), compression=method).get(timeout=30)
                for n, method in ((1, "zlib"), (2, "bzip2"), (3, "xz"))] == [2, 3, 4]
        with pytest.raises(ValueError, match="from us"):
            app.send_task("interop.fail", ("from us",)).get(timeout=30)
        r = app.send_task("interop.echo_request", (1, "two"), {"k": [3]})
        assert r.get(timeout=30) == {"id": r.id, "args": [1, "two"], "kwargs": {"k": [3]},
                                     "root_id": r.id}

        async def from_loop():
            result = await add.adelay(5, 5)
            return await result

        assert asyncio.run(from_loop()) == 10
        # remote control: our app.control reaches the upstream worker, and it answers us
        replies = app.control.ping(timeout=2.0)
        assert [list(r) for r in replies] == [[next(iter(replies[0]))]]
        node = next(iter(replies[0]))
        assert node.startswith("upstream@") and replies[0][node] == {"ok": "pong"}
        assert "interop.add" in app.control.inspect(timeout=2.0).registered()[node]
        later = add.apply_async((1, 1), countdown=2)
        assert app.control.revoke(later.id, reply=True, timeout=2.0)[0][node]["ok"]
        with pytest.raises(TaskRevokedError):
            later.get(timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            output, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
        app.close()
    # the only traceback upstream logged is the one we asked for
    assert output.count(b"Traceback") == 1 and b"ValueError: from us" in output, output.decode()[-3000:]


#: Run by upstream Celery: revoke a countdown task on our worker, then read its state.
UPSTREAM_REVOKE = """
import json, time
from upapp import app
r = app.send_task("interop.add", (1, 2), countdown=2)
replies = app.control.revoke(r.id, terminate=True, reply=True, timeout=2.0)
r.get(timeout=30, propagate=False)
print(json.dumps({"replies": replies, "state": r.state}))
"""


def test_upstream_client_and_our_worker(upstream_python, url):
    app = Celery("ours", broker=url, backend=url, set_as_current=False)

    @app.task(name="interop.add")
    def add(x, y):
        return x + y

    @app.task(name="interop.mul_async")
    async def mul_async(x, y):
        await asyncio.sleep(0.01)
        return x * y

    @app.task(name="interop.fail")
    def fail(message):
        raise ValueError(message)

    @app.task(name="interop.echo_request", bind=True)
    async def echo_request(self, *args, **kwargs):
        return {"id": self.request.id, "args": list(args), "kwargs": kwargs,
                "root_id": self.request.root_id}

    try:
        with running_worker(app, loop_workers=1, sync_workers=2, hostname="ours@test"):
            started = time.monotonic()
            proc = subprocess.run([str(upstream_python), str(INTEROP_DIR / "producer.py")],
                                  cwd=INTEROP_DIR, env=_env(url), capture_output=True, timeout=120)
            assert proc.returncode == 0, proc.stderr.decode()[-3000:]
            out = json.loads(proc.stdout)
            assert time.monotonic() - started < 60
            # upstream Celery's own CLI and app.control reach our worker
            ping = subprocess.run(
                [str(upstream_python), "-m", "celery", "-A", "upapp", "inspect", "ping", "-j"],
                cwd=INTEROP_DIR, env=_env(url), capture_output=True, timeout=60)
            assert ping.returncode == 0, ping.stderr.decode()[-3000:]
            assert json.loads(ping.stdout) == {"ours@test": {"ok": "pong"}}
            revoke = subprocess.run([str(upstream_python), "-c", UPSTREAM_REVOKE],
                                    cwd=INTEROP_DIR, env=_env(url), capture_output=True, timeout=60)
            assert revoke.returncode == 0, revoke.stderr.decode()[-3000:]
            assert json.loads(revoke.stdout) == {
                "replies": [{"ours@test": {"ok": "terminate: tasks unknown"}}],
                "state": "REVOKED"}
    finally:
        app.close()
    assert out["add"] == 5
    assert out["async"] == 42
    assert out["fail"] == ["ValueError", ["from upstream"]]
    assert out["echo"] == {"id": out["echo_id"], "args": [1, "two"], "kwargs": {"k": [3]},
                           "root_id": out["echo_id"]}
    assert out["compressed"] == [2, 4, 6]  # upstream's gzip, bzip2 and lzma bodies
