"""The ``django-db`` result backend (django-celery-results' tables through Django's ORM, on
PostgreSQL) passes the conformance suite; its rows are what django-celery-results reads."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery import Celery, states
from tests.conftest import need_module, need_server

from .backend_suite import BackendSuite

need_module("django", "the django extra")
need_module("django_celery_results", "pip install django-celery-results --no-deps")
psycopg: Any = need_module("psycopg", "the django extra")

SETTINGS = "tests.apps.django_results_settings"


@pytest.fixture(scope="module", autouse=True)
def django_db() -> Iterator[None]:
    """Django set up on the ``celery_django`` database with django-celery-results migrated;
    DJANGO_SETTINGS_MODULE is set for this module only (child processes read it)."""
    need_server("PostgreSQL", "127.0.0.1", 5432)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'celery_django'").fetchone() is None:
            conn.execute("CREATE DATABASE celery_django")
    before = os.environ.get("DJANGO_SETTINGS_MODULE")
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    import django
    from django.conf import settings

    if settings.configured and settings.SETTINGS_MODULE != SETTINGS:
        pytest.skip(f"Django is set up with {settings.SETTINGS_MODULE} in this process")
    django.setup()
    from django.core.management import call_command
    from django_celery_results.models import GroupResult, TaskResult

    call_command("migrate", "django_celery_results", verbosity=0)
    TaskResult.objects.all().delete()
    GroupResult.objects.all().delete()
    try:
        yield
    finally:
        from django.db import connections

        connections.close_all()
        if before is None:
            os.environ.pop("DJANGO_SETTINGS_MODULE", None)
        else:
            os.environ["DJANGO_SETTINGS_MODULE"] = before


class TestDjangoDbBackend(BackendSuite):
    delete_many = 503  # its chunk is 500; it stores row by row, slowly

    def make_url(self, tmp_path: Path) -> str:
        return "django-db"


def test_rows_are_django_celery_results_rows() -> None:
    from django_celery_results.models import TaskResult

    app = Celery("rows", broker="memory://", backend="django-db", result_extended=True)
    try:
        tid = str(uuid.uuid4())

        class Request:
            task, args, kwargs, hostname = "proj.add", [2, 3], {}, "celery@here"
            children, group, parent_id, retries, delivery_info = [], None, None, 0, {}

        app.backend.store_result(tid, 5, states.SUCCESS, request=Request())
        row = TaskResult.objects.get(task_id=tid)
        assert (row.status, row.content_type, row.content_encoding) == (
            states.SUCCESS, "application/json", "utf-8")
        assert json.loads(row.result) == 5 and json.loads(row.meta)["children"] == []
        assert (row.task_name, row.worker, json.loads(row.task_args)) == (
            "proj.add", "celery@here", [2, 3])
        # A row written as django-celery-results writes it reads back here.
        other = str(uuid.uuid4())
        TaskResult.objects.create(task_id=other, status=states.FAILURE,
                                  content_type="application/json", content_encoding="utf-8",
                                  result=json.dumps({"exc_type": "ValueError",
                                                     "exc_message": ["bad"],
                                                     "exc_module": "builtins"}),
                                  meta=json.dumps({"children": []}), traceback="Traceback ...")
        with pytest.raises(ValueError, match="bad"):
            app.AsyncResult(other).get(timeout=5)
        assert app.AsyncResult(other).traceback == "Traceback ..."
    finally:
        app.close()
