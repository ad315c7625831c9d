"""django-db results interoperate with upstream Celery 5 and django-celery-results' own
backend, both ways, on PostgreSQL: each side reads the rows the other wrote (values,
failures with their traceback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, need_module, need_server

need_module("django", "the django extra")
need_module("django_celery_results", "pip install django-celery-results --no-deps")
psycopg: Any = need_module("psycopg", "the django extra")

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("UPSTREAM_DJANGO_VENV", ROOT / ".cache" / "upstream-django"))
REQUIREMENTS = ["celery>=5.5,<6", "django>=4.2,<6", "django-celery-results==2.6.0",
                "psycopg>=3.1"]  # pure Python: also on free-threaded builds
SETTINGS = "tests.apps.django_results_settings"


def _upstream_python() -> Path:
    """Upstream Celery with django-celery-results in a venv of its own, made on first use;
    ``.installed`` is written only once pip succeeded (a half-built venv is made again)."""
    python, done = VENV / "bin" / "python", VENV / ".installed"
    if done.exists():
        return python
    shutil.rmtree(VENV, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
                       check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        message = f"could not make the upstream Celery + django-celery-results venv at {VENV}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    done.write_text(" ".join(REQUIREMENTS))
    return python


def _run(python: Path | str, code: str, ours: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CELERY_RESULT_BACKEND")}
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    # Upstream's interpreter must not see our package: only the settings module's folder.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)] if ours else [str(ROOT)])
    prelude = ("import json, sys, django\ndjango.setup()\nfrom celery import Celery\n"
               "app = Celery('interop', broker='memory://', backend='django-db', "
               "result_extended=True)\nout = {}\n")
    done = subprocess.run([str(python), "-c", prelude + code + "\nprint(json.dumps(out))"],
                          cwd=ROOT / "tests", env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


READ = textwrap.dedent("""
    for tid in sys.argv[1:] or IDS:
        r = app.AsyncResult(tid)
        value = r.result
        out[tid] = [r.state, repr(value) if isinstance(value, Exception) else value, r.traceback]
""")


def _write(prefix: str) -> str:
    return textwrap.dedent(f"""
    app.backend.store_result("{prefix}-ok", {{"n": [1, 2], "s": "héllo"}}, "SUCCESS")
    app.backend.store_result("{prefix}-fail", ValueError("bad", 3), "FAILURE",
                             traceback="Traceback (most recent call last): ...")
    """)


def test_upstream_and_ours_read_each_others_django_db_results() -> None:
    need_server("PostgreSQL", "127.0.0.1", 5432)
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'celery_django'").fetchone() is None:
            conn.execute("CREATE DATABASE celery_django")
    upstream = _upstream_python()
    ours, theirs = f"ours-{uuid.uuid4()}", f"up-{uuid.uuid4()}"
    _run(sys.executable, "from django.core.management import call_command\n"
         "call_command('migrate', 'django_celery_results', verbosity=0)\n" + _write(ours), True)
    _run(upstream, "assert not hasattr(app, 'portal'), 'upstream Celery expected'\n"
         + _write(theirs), False)
    ids = [f"{ours}-ok", f"{ours}-fail", f"{theirs}-ok", f"{theirs}-fail"]
    code = f"IDS = {ids!r}\n" + READ
    for name, python, is_ours in (("upstream", upstream, False), ("ours", sys.executable, True)):
        seen = _run(python, code, is_ours)
        for prefix in (ours, theirs):
            assert seen[f"{prefix}-ok"] == ["SUCCESS", {"n": [1, 2], "s": "héllo"}, None], name
            state, value, traceback = seen[f"{prefix}-fail"]
            assert (state, value) == ("FAILURE", "ValueError('bad', 3)"), name
            # django-celery-results drops the traceback of a store without a request (its
            # extended fields overwrite it with None): only ours has one.
            expected = "Traceback (most recent call last): ..." if prefix == ours else None
            assert traceback == expected, name
