"""What users import to test their own Celery code: the pytest plugin (celery.contrib.pytest)
run by a real pytest in a subprocess, start_worker, and app.Worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from celery import Celery
from celery.contrib.testing import tasks as _ping_task  # noqa: F401 - celery.ping
from celery.contrib.testing.app import TestApp, setup_default_app
from celery.contrib.testing.worker import start_worker, test_worker_starting, test_worker_stopped
from celery.exceptions import ImproperlyConfigured

from ..conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]

USER_TESTS = '''
import asyncio

import pytest

from celery import current_app


@pytest.fixture(scope="session")
def celery_config():
    return {"task_default_queue": "user-tests"}


@pytest.fixture(scope="session")
def celery_includes():
    return ["usertasks"]


def test_app_fixture_settings_and_marker_free(celery_app):
    assert celery_app.conf.broker_url == "memory://"
    assert celery_app.conf.task_default_queue == "user-tests"


@pytest.mark.celery(result_extended=True, task_default_queue="marked")
def test_marker_overrides_settings(celery_app):
    assert celery_app.conf.result_extended is True
    assert celery_app.conf.task_default_queue == "marked"


def test_worker_runs_def_and_async_def_tasks(celery_app, celery_worker):
    @celery_app.task(name="user.mul")
    def mul(x, y):
        return x * y

    @celery_app.task(name="user.amul")
    async def amul(x, y):
        await asyncio.sleep(0.01)
        return x * y

    celery_app.Worker  # the class exists on every app
    # tasks defined after the worker started: the worker reads the registry per message
    assert mul.delay(6, 7).get(timeout=10) == 42
    assert amul.delay(3, 5).get(timeout=10) == 15
    assert celery_worker.app is celery_app
    assert current_app._get_current_object() is celery_app


def test_session_worker_runs_included_tasks(celery_session_app, celery_session_worker):
    import usertasks

    assert usertasks.add.delay(2, 3).get(timeout=10) == 5


def test_trap_is_off_by_default(depends_on_current_app, celery_app):
    assert current_app._get_current_object() is celery_app
'''

USER_TASKS = '''
from celery import shared_task


@shared_task(name="usertasks.add")
def add(x, y):
    return x + y
'''


def test_the_pytest_plugin_in_a_users_test_run(tmp_path):
    """A user's test file using the fixtures, run by pytest in a fresh process; the plugin
    is found through its entry point when this package is installed from this checkout."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert declared["entry-points"]["pytest11"] == {"celery": "celery.contrib.pytest"}
    installed = any(e.name == "celery" and e.value == "celery.contrib.pytest"
                    for e in entry_points(group="pytest11"))
    if IN_CI:  # ci/setup.sh installs the package from this pyproject: the plugin is there
        assert installed
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    (tmp_path / "usertasks.py").write_text(textwrap.dedent(USER_TASKS))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"]
    if not installed:  # an older editable install of this checkout: load it by name
        args[3:3] = ["-p", "celery.contrib.pytest"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout, done.stdout


def test_start_worker_pings_runs_tasks_and_stops():
    app = TestApp(config={"task_default_queue": "start-worker"})
    seen = []

    def starting(sender, **kw):
        seen.append(("starting", sender))

    def stopped(sender, worker=None, **kw):
        seen.append(("stopped", worker))

    test_worker_starting.connect(starting)
    test_worker_stopped.connect(stopped)

    @app.task(name="sw.add")
    def add(x, y):
        return x + y

    try:
        with start_worker(app, pool="threads", concurrency=2) as worker:
            assert worker.sync_workers == 2 and worker.loop_workers == 1
            assert add.delay(1, 2).get(timeout=10) == 3
        assert seen == [("starting", app), ("stopped", worker)]
        assert worker._stop_requested
    finally:
        test_worker_starting.disconnect(starting)
        test_worker_stopped.disconnect(stopped)
        app.close()


def test_start_worker_without_the_ping_task_says_what_to_import():
    app = Celery("noping", broker="memory://noping", backend="cache+memory://",
                 set_as_current=False)
    app._tasks.pop("celery.ping", None)  # (imported above: shared tasks reach every app)
    try:
        with pytest.raises(RuntimeError, match="import celery.contrib.testing.tasks"):
            with start_worker(app):
                pass
    finally:
        app.close()


def test_app_worker_takes_celerys_arguments(caplog):
    app = TestApp()
    try:
        worker = app.Worker(concurrency=3, pool="threads", queues="a, b", loglevel="warning",
                            without_heartbeat=True, send_events=True, without_mingle=True)
        assert (worker.sync_workers, worker.queues) == (3, ["a", "b"])
        assert worker.heartbeat is False and worker.task_events is True
        assert "Worker(without_mingle=...) has no effect here" in caplog.text
        assert app.Worker(pool="solo", concurrency=8).sync_workers == 1
        app.Worker(pool="prefork", concurrency=2)
        assert "Worker(pool='prefork'): there is no such pool here" in caplog.text
        with pytest.raises(ImproperlyConfigured, match="Unknown worker pool 'fancy'"):
            app.Worker(pool="fancy")
    finally:
        app.close()


def test_setup_default_app_and_its_trap():
    from celery import _state

    before = _state.get_current_app()
    app = TestApp()
    with setup_default_app(app):
        assert _state.get_current_app() is app
    with setup_default_app(app, use_trap=True):
        with pytest.raises(RuntimeError, match="Test depends on the current app"):
            _ = _state.get_current_app().conf
    assert _state.get_current_app() is before
    app.close()
