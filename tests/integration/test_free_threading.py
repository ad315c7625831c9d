"""The GIL on free-threaded builds (celery/utils/gil.py): celery keeps it off, a worker says
at start whether it is on and, when something turned it on, what did.

On a GIL build these check the start-up line and that nothing is blocked; on a free-threaded
build (CI's second pass, ci/ft-test.sh) they check that the GIL is off inside a running
worker with the package's default extras installed, and that an extension let through with
CELERY_ALLOW_GIL=1 is named as the one that turned it on."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys

import pytest

from celery import Celery
from celery.utils import gil
from tests.faults.procs import ROOT, Worker

REDIS_DB = 11


def installed(name: str) -> bool:
    """Whether ``name`` is installed (asked of the path finder: celery blocks some imports)."""
    return importlib.machinery.PathFinder.find_spec(name) is not None


FREE_THREADED = gil.FREE_THREADED
free_threaded_only = pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded build")


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


@pytest.mark.redis
def test_a_running_worker_reports_the_gil_state_its_tasks_see(redis_url: str) -> None:
    env = {"CLIAPP_BROKER": redis_url, "CLIAPP_BACKEND": redis_url}
    worker = Worker(env, "--loop-workers", "2", "--sync-workers", "2",
                    app="tests.apps.cliapp").wait_ready()
    try:
        app = Celery("client", broker=redis_url, backend=redis_url, set_as_current=False)
        try:
            seen = {app.send_task("tests.apps.cliapp.gil_enabled").get(timeout=20),
                    app.send_task("tests.apps.cliapp.agil_enabled").get(timeout=20)}
        finally:
            app.close()
    finally:
        worker.signal(15)
        worker.wait_stopped(30)
    build = "free-threaded build" if FREE_THREADED else "GIL build"
    version = ".".join(map(str, sys.version_info[:3]))
    if FREE_THREADED:
        assert seen == {False}, worker.output  # in sync threads and loop workers alike
        assert f"({build}), GIL disabled" in worker.output, worker.output
        assert "The GIL is enabled" not in worker.output
        assert "RuntimeWarning" not in worker.output, worker.output
    else:
        assert seen == {True}
        assert f"{version} ({build}), GIL enabled" in worker.output, worker.output
        assert "The GIL is enabled" not in worker.output  # a GIL build is not warned about


def test_importing_celery_and_its_redis_client_keeps_the_gil_as_it_was() -> None:
    proc = python("import sys, celery.transport.redis, celery.backends.redis, "
                  "celery.messaging.serialization, celery.utils.portal\n"
                  "from celery.utils import gil\n"
                  "print(gil.enabled(), sorted(gil.BLOCKED))")
    assert proc.returncode == 0, proc.stderr
    if FREE_THREADED:
        assert proc.stdout.split(" ", 1)[0] == "False", proc.stdout + proc.stderr
        assert "GIL" not in proc.stderr, proc.stderr  # no RuntimeWarning either
        if installed("libvalkey"):
            assert "'libvalkey'" in proc.stdout
    else:
        assert proc.stdout == "True []\n"


@free_threaded_only
@pytest.mark.skipif(not installed("libvalkey"), reason="libvalkey is not installed")
def test_an_extension_let_through_is_named_as_what_turned_the_gil_on() -> None:
    proc = python("import warnings; warnings.simplefilter('ignore')\n"
                  "import celery, libvalkey\n"
                  "from celery.utils import gil\n"
                  "print(gil.describe()[1])", CELERY_ALLOW_GIL="1")
    assert proc.returncode == 0, proc.stderr
    assert "The GIL is enabled on this free-threaded build" in proc.stdout
    assert "turned on by importing libvalkey" in proc.stdout, proc.stdout


@free_threaded_only
def test_python_gil_1_is_named_as_what_turned_the_gil_on() -> None:
    proc = python("import celery\nfrom celery.utils import gil\n"
                  "print(gil.BLOCKED, gil.describe()[1])", PYTHON_GIL="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[] "), proc.stdout  # nothing blocked: the GIL is on anyway
    assert "PYTHON_GIL=1" in proc.stdout


def test_the_start_up_line_names_the_interpreter() -> None:
    line, warning = gil.describe()
    version = ".".join(map(str, sys.version_info[:3]))
    assert line.startswith(f"{sys.implementation.name} {version} (")
    assert ("GIL enabled" in line) == gil.enabled()
    assert warning is None or FREE_THREADED


@free_threaded_only
def test_python_gil_0_keeps_the_gil_off_and_blocks_nothing() -> None:
    proc = python("import celery, celery.transport.redis\nfrom celery.utils import gil\n"
                  "print(gil.enabled(), gil.BLOCKED)", PYTHON_GIL="0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "False []\n", proc.stdout
