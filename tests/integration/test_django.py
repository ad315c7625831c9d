"""The Django example project (examples/django) against PostgreSQL: a real worker runs
its ``@shared_task`` def and async def tasks, which use the ORM, sent from ``manage.py``;
the worker leaves no database connection open between tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery import Celery
from tests.conftest import need_server
from tests.faults.procs import ROOT, Worker

pytest.importorskip("django")
psycopg = pytest.importorskip("psycopg")

EXAMPLE = ROOT / "examples" / "django"
DB_NAME = "celery_django"
APP_NAME = "celery-django-test"


def _admin() -> object:
    return psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test",
                           autocommit=True)


@pytest.fixture
def database() -> str:
    """The example's database, made if missing, its widgets emptied when it has any."""
    need_server("PostgreSQL", "127.0.0.1", 5432)
    with _admin() as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=DB_NAME, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('demoapp_widget')").fetchone()[0] is not None:
            conn.execute("DELETE FROM demoapp_widget")
    return DB_NAME


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "DJANGO_DB_NAME": DB_NAME,
        "DJANGO_DB_APP": APP_NAME,
        "CELERY_BROKER_URL": f"sqlite:///{tmp_path}/broker.db",
        "CELERY_RESULT_BACKEND": f"db+sqlite:///{tmp_path}/results.db",
    }


def _manage(env: dict[str, str], *args: str) -> str:
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), full.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE, env=full,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _open_connections() -> int:
    with _admin() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (APP_NAME,)).fetchone()
    return int(row[0])


def test_django_project_tasks_use_the_orm_in_a_worker(database: str, tmp_path: Path) -> None:
    env = _env(tmp_path)
    _manage(env, "migrate", "--noinput")
    worker = Worker(env, "--sync-workers", "1", "--loop-workers", "1", cwd=EXAMPLE, app="proj")
    try:
        worker.wait_ready(60)
        # autodiscover_tasks() with no arguments found demoapp's tasks (INSTALLED_APPS).
        assert "demoapp.tasks.abump" in worker.output and "demoapp.tasks.bump" in worker.output
        # Sent from Django (manage.py), through @shared_task proxies: def then async def.
        assert _manage(env, "bump", "gadget").strip() == "bump=1 abump=2"
        assert _manage(env, "bump", "gadget").strip() == "bump=3 abump=4"
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname=DB_NAME) as conn:
            row = conn.execute("SELECT bumps FROM demoapp_widget WHERE name = 'gadget'").fetchone()
        assert row == (4,)

        # Each def task starts without a connection: the one before it closed its own.
        app = Celery("sender", broker=env["CELERY_BROKER_URL"],
                     backend=env["CELERY_RESULT_BACKEND"], set_as_current=False, fixups=[])
        try:
            for _ in range(2):
                name = "demoapp.tasks.bump"
                assert app.send_task(name, ("gizmo",)).get(timeout=30) >= 1
                assert app.send_task("demoapp.tasks.connection_open").get(timeout=30) is False
            assert app.send_task("demoapp.tasks.abump", ("gizmo",)).get(timeout=30) == 3
        finally:
            app.close()
        # ... and none is left open after the tasks, def or async def (whose close is
        # handed to asgiref's thread after the result: wait for it, a few seconds at most).
        deadline = time.monotonic() + 15
        while _open_connections() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _open_connections() == 0, worker.output
        assert "Traceback" not in worker.output, worker.output
    finally:
        worker.stop()
