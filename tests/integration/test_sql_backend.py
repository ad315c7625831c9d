"""The SQL result backend (backends/sql.py) on real PostgreSQL and MariaDB: a worker's
results, groups and chords; the database_* settings; old pickled rows; errors.

The conformance suite (tests/conformance) covers store/get/wait/expiry; interop with
upstream Celery is tests/compat/test_upstream_sql_interop.py.
"""

from __future__ import annotations

import asyncio
import collections
import pickle
import uuid

import pytest
import sqlalchemy as sa

from celery import Celery, chord, group, states
from celery.backends.base import backend_for_url
from celery.backends.sql import SQLBackend
from celery.exceptions import BackendStoreError, ConnectionLost, DecodeError, ImproperlyConfigured
from tests.conftest import mariadb_url, postgres_url

from .worker_harness import running_worker

DATABASE = "celery_sqla"


@pytest.fixture(params=["postgresql", "mariadb"])
def sa_url(request) -> str:
    """A SQLAlchemy URL (without db+) of an existing, reachable database."""
    return postgres_url(DATABASE) if request.param == "postgresql" else mariadb_url(DATABASE)


def new_id() -> str:
    return str(uuid.uuid4())


def _add(x: int, y: int) -> int:
    return x + y


def test_worker_results_groups_and_chords(tmp_path, sa_url):
    app = Celery("sqlworker", broker=f"sqlite:///{tmp_path}/broker.db", backend="db+" + sa_url,
                 result_extended=True, set_as_current=False)
    add = app.task(name="sqlworker.add")(_add)

    @app.task(name="sqlworker.aadd")
    async def aadd(x, y):
        await asyncio.sleep(0.01)
        return x + y

    @app.task(name="sqlworker.tsum")
    def tsum(values):
        return sum(values)

    @app.task(name="sqlworker.fail")
    def fail(message):
        raise KeyError(message)

    try:
        with running_worker(app, loop_workers=1, sync_workers=2):
            result = add.delay(2, 3)
            assert result.get(timeout=20) == 5
            meta = app.backend.get_task_meta(result.id)
            assert (meta["name"], meta["args"], meta["queue"]) == ("sqlworker.add", [2, 3], "celery")
            assert aadd.delay(20, 22).get(timeout=20) == 42
            with pytest.raises(KeyError, match="nope"):
                fail.delay("nope").get(timeout=20)
            saved = group(add.s(i, i) for i in range(10)).delay()
            saved.save()
            assert saved.get(timeout=30) == [2 * i for i in range(10)]
            restored = app.GroupResult.restore(saved.id)
            assert [r.id for r in restored.results] == [r.id for r in saved.results]
            joined = chord([aadd.s(i, 1) for i in range(5)], tsum.s()).delay()
            assert joined.get(timeout=60) == sum(i + 1 for i in range(5))
    finally:
        app.close()


def test_table_names_schemas_and_engine_settings(sa_url):
    suffix = uuid.uuid4().hex[:8]
    names = {"task": f"t_{suffix}", "group": f"g_{suffix}"}
    engine = sa.create_engine(sa_url)
    schema = None
    if engine.dialect.name == "postgresql":
        schema = f"s_{suffix}"
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    made: list[sa.Engine] = []
    app = Celery("sqlsettings", broker="memory://", backend="db+" + sa_url,
                 set_as_current=False, database_table_names=names,
                 database_table_schemas={"task": schema, "group": schema} if schema else None,
                 database_engine_options={"pool_size": 2, "pool_pre_ping": True},
                 database_engine_callback=made.append,
                 database_create_tables_at_setup=False)
    try:
        backend = app.backend
        assert isinstance(backend, SQLBackend)
        assert not sa.inspect(engine).has_table(names["task"], schema)  # not at setup
        tid = new_id()
        backend.store_result(tid, 7, states.SUCCESS)
        assert app.AsyncResult(tid).get(timeout=5) == 7
        inspector = sa.inspect(engine)
        assert inspector.has_table(names["task"], schema)
        assert inspector.has_table(names["group"], schema)
        if schema:  # a fresh schema: nothing made under the default names
            assert not inspector.has_table("celery_taskmeta", schema)
        assert len(made) == 1 and made[0].pool.size() == 2  # type: ignore[attr-defined]
    finally:
        app.close()
        with engine.begin() as conn:
            for name in names.values():
                table = f"{schema}.{name}" if schema else name
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            if schema:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


async def test_reads_rows_celery_5_6_pickled(sa_url):
    """Celery <= 5.6 stored ``result`` with PickleType: plain data and exceptions are read;
    any other pickled object only when pickle is accepted."""
    app = Celery("sqlpickle", broker="memory://", backend="db+" + sa_url, set_as_current=False)
    trusting = Celery("sqlpickle2", broker="memory://", backend="db+" + sa_url,
                      set_as_current=False, result_accept_content=["json", "pickle"])
    try:
        backend = app.backend
        await backend.ping()
        table = backend.tables.task
        plain, error, other = new_id(), new_id(), new_id()
        engine = sa.create_engine(sa_url)
        with engine.begin() as conn:
            conn.execute(table.insert(), [
                {"task_id": plain, "status": states.SUCCESS,
                 "result": pickle.dumps({"n": [1, 2], "when": None}, 4)},
                {"task_id": error, "status": states.FAILURE,
                 "result": pickle.dumps(ValueError("bad", 1), 4)},
                {"task_id": other, "status": states.SUCCESS,
                 "result": pickle.dumps(collections.Counter("abb"), 4)},
            ])
        engine.dispose()
        assert await app.AsyncResult(plain).aget(timeout=5) == {"n": [1, 2], "when": None}
        with pytest.raises(ValueError, match="bad"):
            await app.AsyncResult(error).aget(timeout=5)
        with pytest.raises(DecodeError, match="collections.Counter is not allowed"):
            await backend.aget_task_meta(other)
        assert (await trusting.backend.aget_task_meta(other))["result"] == {"a": 1, "b": 2}
    finally:
        app.close()
        trusting.close()


def test_url_and_driver_errors_are_one_line():
    app = Celery("sqlerrors", broker="memory://", set_as_current=False)
    try:
        with pytest.raises(ImproperlyConfigured, match="driver 'MySQLdb'"):
            backend_for_url("db+mysql+mysqldb://root@127.0.0.1/x", app.conf).get_task_meta("x")
        with pytest.raises(ImproperlyConfigured, match="Invalid database result backend URL"):
            backend_for_url("db+://", app.conf)
        app.conf.database_engine_callback = "tests.nowhere.callback"
        with pytest.raises(ImproperlyConfigured, match="cannot be imported"):
            backend_for_url("db+mysql+pymysql://root@127.0.0.1:1/x", app.conf)
        app.conf.database_engine_callback = None
        down = backend_for_url("db+mysql+pymysql://root@127.0.0.1:1/x", app.conf)
        with pytest.raises(ConnectionLost, match="SQL result backend"):
            down.get_task_meta("x")
        down.close()
    finally:
        app.close()


async def test_pooled_connections_killed_by_the_server_are_replaced():
    """``pool_pre_ping`` (database_engine_options' default): connections the server closed
    (a restart, an idle timeout) are noticed on checkout and replaced, no error surfaces."""
    url = postgres_url(DATABASE)
    name = f"sqlkill-{uuid.uuid4().hex[:8]}"  # only this backend's connections are killed
    app = Celery("sqlkill", broker="memory://", backend="db+" + url, set_as_current=False,
                 database_engine_options={"pool_pre_ping": True,
                                          "connect_args": {"application_name": name}})
    admin = sa.create_engine(url)
    try:
        backend = app.backend
        first, second = new_id(), new_id()
        await backend.astore_result(first, 1, states.SUCCESS)
        with admin.begin() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"), {"name": name}).scalar()
        assert killed >= 1
        await backend.astore_result(second, 2, states.SUCCESS)
        assert [await app.AsyncResult(t).aget(timeout=5) for t in (first, second)] == [1, 2]
    finally:
        app.close()
        admin.dispose()


async def test_a_value_the_database_refuses_fails_that_task_only(sa_url):
    """A batch with a row the database refuses: the others are stored, the refused one
    becomes a FAILURE saying why, and an id too long for the table is logged and dropped."""
    app = Celery("sqlrefused", broker="memory://", backend="db+" + sa_url, set_as_current=False,
                 result_extended=True)
    try:
        backend = app.backend
        good, refused, too_long = new_id(), new_id(), "x" * 200
        # refused: a worker name over the column's 155 characters
        request = type("Req", (), {"hostname": "w" * 300, "task": "t", "args": [],
                                   "kwargs": {}, "retries": 0, "delivery_info": {}})()
        await backend.astore_many([
            (good, backend.prepare_meta(good, states.SUCCESS, 1)),
            (refused, backend.prepare_meta(refused, states.SUCCESS, 2, request=request)),
            (too_long, backend.prepare_meta(too_long, states.SUCCESS, 3)),
        ])
        assert await app.AsyncResult(good).aget(timeout=5) == 1
        with pytest.raises(BackendStoreError, match=f"result of task {refused} could not"):
            await app.AsyncResult(refused).aget(timeout=5)
        assert (await backend.aget_task_meta(too_long))["status"] == states.PENDING
    finally:
        app.close()
