"""The Django fix-up and @shared_task before any app, each in a fresh interpreter (Django's
setup and the default app are process-wide, so they are kept out of the test process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celery import Celery
from celery.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django"


def _python(code: str, cwd: Path, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), full.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], cwd=cwd,
                          env=full, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_shared_task_defined_before_any_app_runs_in_the_app_made_after(tmp_path: Path) -> None:
    # In __main__: the name depends on the app (proj.add), unknown when the task is defined.
    out = _python("""
        from celery import Celery, shared_task

        @shared_task
        def add(x, y):
            return x + y

        @shared_task(name="fixed.mul")
        def mul(x, y):
            return x * y

        app = Celery("proj", broker="memory://", backend="cache+memory://")
        app.conf.task_always_eager = True
        print(add.name, add.delay(2, 3).get(), mul.name, mul.delay(2, 3).get())
        """, tmp_path)
    assert out.split() == ["proj.add", "5", "fixed.mul", "6"]


def test_django_fixup_sets_up_django_and_discovers_installed_apps() -> None:
    pytest.importorskip("django")
    out = _python("""
        from proj.celery import app
        from celery.contrib.django.task import DjangoTask
        from django.apps import apps

        print("fixup", [type(f).__name__ for f in app.fixups])
        print("ready-before", apps.ready)
        names = sorted(n for n in app.tasks if not n.startswith("celery."))
        print("ready-after", apps.ready)
        print("tasks", " ".join(names))
        print("task-class", isinstance(app.tasks["demoapp.tasks.bump"], DjangoTask))
        print("settings", app.conf.task_time_limit, app.conf.task_track_started)
        """, EXAMPLE, DJANGO_SETTINGS_MODULE="proj.settings")
    assert "fixup ['DjangoFixup']" in out
    assert "ready-before False" in out and "ready-after True" in out  # setup at finalize
    assert ("tasks demoapp.tasks.abump demoapp.tasks.aconnection_open demoapp.tasks.bump "
            "demoapp.tasks.connection_open proj.celery.debug_task") in out
    assert "task-class True" in out
    # config_from_object("django.conf:settings", namespace="CELERY") read CELERY_TASK_*.
    assert "settings 1800 True" in out


def test_django_fixup_not_applied_without_settings_module_or_django(tmp_path: Path) -> None:
    out = _python("""
        from celery import Celery
        print("without", Celery("a").fixups)
        """, tmp_path)
    assert "without []" in out
    out = _python("""
        import sys
        sys.modules["django"] = None  # as if Django were not installed
        from celery import Celery
        print("missing", Celery("a").fixups)
        """, tmp_path, DJANGO_SETTINGS_MODULE="proj.settings")
    assert "missing []" in out and "FixupWarning" in out and "Django is not installed" in out


def test_db_reuse_max_keeps_connections_for_that_many_tasks(tmp_path: Path) -> None:
    pytest.importorskip("django")
    out = _python(f"""
        import django
        from django.conf import settings
        settings.configure(DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3",
                                                   "NAME": {str(tmp_path / "db.sqlite3")!r}}}}},
                           CELERY_DB_REUSE_MAX=2)
        django.setup()
        from django.db import connection
        from celery import Celery
        from celery.fixups.django import DjangoWorkerFixup

        fixup = DjangoWorkerFixup(Celery("a", fixups=[]))
        states = []
        for _ in range(4):  # prerun + postrun of two tasks
            connection.ensure_connection()
            fixup.close_database()
            states.append(connection.connection is not None)
        print("open", states)
        """, tmp_path)
    assert "open [True, True, True, False]" in out


def test_django_cache_backend_is_refused_with_the_reason() -> None:
    app = Celery("a", broker="memory://", backend="django-cache", set_as_current=False, fixups=[])
    try:
        with pytest.raises(ImproperlyConfigured, match="django-cache.*not supported.*django-db"):
            _ = app.backend
    finally:
        app.close()


def test_django_db_backend_says_what_it_needs(tmp_path: Path) -> None:
    pytest.importorskip("django")
    out = _python(f"""
        import django
        from django.conf import settings
        settings.configure(DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3",
                                                   "NAME": {str(tmp_path / "db.sqlite3")!r}}}}})
        from celery import Celery
        from celery.exceptions import ImproperlyConfigured
        try:
            Celery("a", broker="memory://", backend="django-db", fixups=[]).backend
        except ImproperlyConfigured as exc:
            print("refused:", exc)
        """, tmp_path)
    assert "refused: result_backend 'django-db' stores into django-celery-results' tables" in out
    assert "INSTALLED_APPS" in out


def test_delay_on_commit_sends_when_the_transaction_commits(tmp_path: Path) -> None:
    pytest.importorskip("django")
    out = _python(f"""
        import django
        from django.conf import settings
        settings.configure(DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3",
                                                   "NAME": {str(tmp_path / "db.sqlite3")!r}}}}})
        django.setup()
        from django.db import transaction
        from celery import Celery

        app = Celery("a", broker="memory://", task_cls="celery.contrib.django.task:DjangoTask",
                     fixups=[], task_always_eager=True)
        ran = []

        @app.task
        def note(x):
            ran.append(x)

        with transaction.atomic():
            print("returned", note.delay_on_commit(1))
            print("inside", ran)
        print("after", ran)
        try:
            with transaction.atomic():
                note.apply_async_on_commit((2,))
                raise RuntimeError
        except RuntimeError:
            pass
        print("rolled-back", ran)
        """, tmp_path)
    assert out.split("\n")[:4] == ["returned None", "inside []", "after [1]", "rolled-back [1]"]
