"""The Django example project (examples/django) against PostgreSQL: a real worker runs
its ``@shared_task`` def and async def tasks, which use the ORM, sent from ``manage.py``,
with results in django-celery-results' tables (django-db); no task finds the connection of
the one before it still open."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_module, need_server
from tests.faults.procs import ROOT, Worker

need_module("django", "the django extra")
need_module("django_celery_results", "pip install django-celery-results --no-deps")
psycopg: Any = need_module("psycopg", "the django extra")

EXAMPLE = ROOT / "examples" / "django"
DB_NAME = "celery_django"


@pytest.fixture
def database() -> str:
    """The example's database, made if missing, its widgets and results emptied."""
    need_server("PostgreSQL", "127.0.0.1", 5432)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=DB_NAME, autocommit=True) as conn:
        for table in ("demoapp_widget", "django_celery_results_taskresult"):
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None:
                conn.execute(f"DELETE FROM {table}")
    return DB_NAME


def _manage(env: dict[str, str], *args: str) -> str:
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), full.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE, env=full,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_django_project_tasks_use_the_orm_in_a_worker(database: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)  # the project's: django-db
    env = {"DJANGO_SETTINGS_MODULE": "proj.settings", "DJANGO_DB_NAME": database,
           "CELERY_BROKER_URL": f"sqlite:///{tmp_path}/broker.db"}
    _manage(env, "migrate", "--noinput")
    worker = Worker(env, "--sync-workers", "1", "--loop-workers", "1", cwd=EXAMPLE, app="proj")
    try:
        worker.wait_ready(60)
        # autodiscover_tasks() with no arguments found demoapp's tasks (INSTALLED_APPS).
        assert "demoapp.tasks.abump" in worker.output and "demoapp.tasks.bump" in worker.output
        # Sent from Django (manage.py) through @shared_task proxies, def then async def;
        # results read through the django-db backend.
        assert _manage(env, "bump", "gadget").strip() == "bump=1 abump=2"
        assert _manage(env, "bump", "gadget").strip() == "bump=3 abump=4"
        # A task finds no connection open on its thread: the task before closed it (a def
        # task's on its sync thread, an async def task's on asgiref's thread).
        assert _manage(env, "probe").split() == ["connection_open=False",
                                                  "aconnection_open=False"]
        assert "Traceback" not in worker.output, worker.output
    finally:
        worker.stop()
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=DB_NAME) as conn:
        assert conn.execute("SELECT bumps FROM demoapp_widget WHERE name = 'gadget'").fetchone() == (4,)
        # The results are django-celery-results' rows (result_extended: names, workers).
        rows = conn.execute(
            "SELECT status, result, worker FROM django_celery_results_taskresult "
            "WHERE task_name = 'demoapp.tasks.abump' AND task_args LIKE '%gadget%' "
            "ORDER BY date_done").fetchall()
    assert [(status, result) for status, result, _ in rows] == [("SUCCESS", "2"), ("SUCCESS", "4")]
    assert all(worker_name.startswith("celery@") for _, _, worker_name in rows)
