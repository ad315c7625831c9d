"""Upstream Celery and this package share SQL result tables, both ways, on PostgreSQL and
MariaDB: each stores results (with ``result_extended``), a failure and a saved group with
``interop/sql_results.py``, and the other reads them back.

Upstream Celery runs from the venv of test_upstream_interop.py, with SQLAlchemy and the
drivers added to it here. Its own databases (``celery_sqla_interop``): upstream makes
tables narrower than ours on MariaDB (``BLOB``, whole-second ``DATETIME``), which the
conformance suite's large result would not fit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import IN_CI, mariadb_url, postgres_url

from .test_upstream_interop import _upstream_python

SCRIPT = Path(__file__).parent / "interop" / "sql_results.py"
ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ("sqlalchemy>=2.0", "psycopg[binary]>=3.1", "pymysql>=1.1")


@pytest.fixture(scope="module")
def upstream_python() -> Path:
    python = _upstream_python()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # upstream's own only
    check = [str(python), "-c", "import sqlalchemy, psycopg, pymysql"]
    if subprocess.run(check, capture_output=True, env=env, cwd="/").returncode != 0:
        try:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *DRIVERS],
                           check=True, capture_output=True, timeout=600, env=env)
        except (subprocess.SubprocessError, OSError) as exc:
            message = f"could not install SQLAlchemy and the drivers into {python}: {exc}"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
    version = subprocess.run([str(python), "-c", "import celery; print(celery.__version__)"],
                             capture_output=True, text=True, env=env, cwd="/").stdout.strip()
    if tuple(int(p) for p in version.split(".")[:2]) < (5, 7):
        # Celery <= 5.6 pickles the result column whatever the serializer: it reads
        # neither our rows nor 5.7's (we read its; tests/unit/test_sql_tables.py).
        pytest.fail(f"upstream Celery {version} in {python}: this test needs 5.7's layout")
    return python


@pytest.fixture(params=["postgresql", "mariadb"])
def url(request) -> str:
    if request.param == "postgresql":
        return "db+" + postgres_url("celery_sqla_interop")
    return "db+" + mariadb_url("celery_sqla_interop")


def _run(python: Path | str, mode: str, url: str, prefix: str, ours: bool) -> str:
    env = dict(os.environ)
    if ours:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    else:
        env.pop("PYTHONPATH", None)
    done = subprocess.run([str(python), str(SCRIPT), mode, url, prefix], env=env,
                          cwd=SCRIPT.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _check(read: dict, prefix: str, name_read: bool) -> None:
    ok, fail, progress = read["ok"], read["fail"], read["progress"]
    assert ok["state"] == "SUCCESS"
    assert ok["result"] == {"n": 1, "s": "h\u00e9llo", "l": [1, 2.5, None]}
    assert ok["date_done"] is not None
    extended = {"args": [1, 2], "kwargs": {"k": "v"}, "worker": f"{prefix}@host",
                "retries": 2, "queue": "celery"}
    for got in (ok, fail, progress):
        assert {k: got[k] for k in extended} == extended
        if name_read:
            assert got["name"] == "interop.add"
    assert fail["state"] == "FAILURE" and fail["result"] == ["KeyError", ["gone"]]
    assert fail["traceback"].startswith("Traceback")
    assert progress["state"] == "PROGRESS" and progress["result"] == {"current": 3}
    assert progress["date_done"] is None
    assert read["missing"]["state"] == "PENDING"
    assert read["group"] == [f"{prefix}-group", [f"{prefix}-ok", f"{prefix}-fail"]]


def test_upstream_reads_our_results(upstream_python, url):
    prefix = f"ours{uuid.uuid4().hex[:12]}"
    assert _run(sys.executable, "write", url, prefix, ours=True) == "ok"
    _check(json.loads(_run(upstream_python, "read", url, prefix, ours=False)), prefix, True)


def test_we_read_upstream_results(upstream_python, url):
    prefix = f"up{uuid.uuid4().hex[:12]}"
    assert _run(upstream_python, "write", url, prefix, ours=False) == "ok"
    # AsyncResult.name is the name given when it was made here, not the stored one.
    _check(json.loads(_run(sys.executable, "read", url, prefix, ours=True)), prefix, False)
