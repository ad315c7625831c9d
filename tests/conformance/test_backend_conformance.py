"""Every result backend runs the same conformance suite (backend_suite.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import flushed_redis_url, mariadb_url, postgres_url

from .backend_suite import BackendSuite

REDIS_DB = 8


class TestMemoryBackend(BackendSuite):
    multiprocess = False

    def make_url(self, tmp_path: Path) -> str:
        return f"cache+memory://conformance-{tmp_path.name}"


@pytest.mark.redis
class TestRedisBackend(BackendSuite):
    def make_url(self, tmp_path: Path) -> str:
        return flushed_redis_url(REDIS_DB)


class TestSQLiteBackend(BackendSuite):
    def make_url(self, tmp_path: Path) -> str:
        return f"db+sqlite:///{tmp_path}/results.db"


class TestFilesystemBackend(BackendSuite):
    def make_url(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}/results"


class TestPostgreSQLBackend(BackendSuite):
    """``db+postgresql+psycopg://``: upstream's tables (backends/sql.py)."""

    def make_url(self, tmp_path: Path) -> str:
        return "db+" + postgres_url("celery_sqla")


class TestMariaDBBackend(BackendSuite):
    """``db+mysql+pymysql://``: upstream's tables (backends/sql.py)."""

    def make_url(self, tmp_path: Path) -> str:
        return "db+" + mariadb_url("celery_sqla")
