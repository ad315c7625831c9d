"""DatabaseBackend (db+sqlite://) on real files: storage, expiry, waiting, processes, bad files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from celery import Celery, states
from celery.backends import database
from celery.backends.base import backend_for_url
from celery.backends.database import DatabaseBackend
from celery.exceptions import ConnectionLost, ImproperlyConfigured, TimeoutError
from celery.transport.embedded import wakeup_for

from .test_sqlite_transport import SRC, rows


class Boom(Exception):
    """A user's exception class, for the round trip."""


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "r.db"


@pytest.fixture
def make_backend(db_path: Path):
    apps: list[Celery] = []

    def make(**conf) -> DatabaseBackend:
        app = Celery("t", backend=f"db+sqlite:///{db_path}", **conf)
        apps.append(app)
        backend = app.backend
        assert isinstance(backend, DatabaseBackend)
        return backend

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def backend(make_backend) -> DatabaseBackend:
    return make_backend()


# -- configuration --------------------------------------------------------------------------


def test_registered_for_db_sqlite(db_path):
    app = Celery("t")
    try:
        assert isinstance(backend_for_url(f"db+sqlite:///{db_path}", app.conf), DatabaseBackend)
        with pytest.raises(ImproperlyConfigured, match="in-memory"):
            backend_for_url("db+sqlite:///:memory:", app.conf)
    finally:
        app.close()


# -- storage --------------------------------------------------------------------------------


async def test_store_get_forget_round_trip(backend, db_path):
    await backend.astore_result("t1", {"answer": [1, 2]}, states.SUCCESS)
    meta = await backend.aget_task_meta("t1")
    assert meta["status"] == states.SUCCESS and meta["result"] == {"answer": [1, 2]}
    assert meta["task_id"] == "t1" and meta["date_done"]
    [(status, stored, expires_at)] = rows(db_path, "SELECT status, meta, expires_at FROM celery_taskmeta")
    assert status == states.SUCCESS
    assert backend.decode(stored) == meta and stored.startswith(b'{"status": "SUCCESS"')
    assert expires_at == pytest.approx(time.time() + 86400, abs=5)  # result_expires: 1 day
    await backend.aforget("t1")
    assert (await backend.aget_task_meta("t1"))["status"] == states.PENDING
    assert rows(db_path, "SELECT count(*) FROM celery_taskmeta") == [(0,)]


async def test_unknown_task_is_pending(backend):
    meta = await backend.aget_task_meta("nobody")
    assert meta["status"] == states.PENDING and meta["result"] is None


async def test_stored_success_is_never_overwritten(backend):
    await backend.astore_result("t", 1, states.SUCCESS)
    await backend.astore_result("t", None, states.STARTED)
    await backend.astore_result("t", ValueError("late"), states.FAILURE)
    meta = await backend.aget_task_meta("t")
    assert (meta["status"], meta["result"]) == (states.SUCCESS, 1)


async def test_other_states_are_replaced(backend):
    await backend.astore_result("t", None, states.STARTED)
    await backend.astore_result("t", KeyError("x"), states.FAILURE)
    await backend.astore_result("t", 2, states.SUCCESS)
    meta = await backend.aget_task_meta("t")
    assert (meta["status"], meta["result"]) == (states.SUCCESS, 2)


async def test_store_many_in_one_call(backend):
    await backend.astore_many([(f"m{i}", backend.prepare_meta(f"m{i}", states.SUCCESS, i))
                               for i in range(20)])
    raws = await backend.aget_many_raw([f"m{i}" for i in range(21)])
    assert [backend.decode(raws[f"m{i}"])["result"] for i in range(20)] == list(range(20))
    assert raws["m20"] is None


async def test_exceptions_round_trip(backend):
    await backend.astore_result("v", ValueError("bad value", 3), states.FAILURE, traceback="tb")
    await backend.astore_result("b", Boom("mine"), states.FAILURE)
    value = (await backend.aget_task_meta("v"))["result"]
    assert isinstance(value, ValueError) and value.args == ("bad value", 3)
    assert (await backend.aget_task_meta("v"))["traceback"] == "tb"
    boom = (await backend.aget_task_meta("b"))["result"]
    assert isinstance(boom, Boom) and boom.args == ("mine",)


async def test_no_expiry_when_result_expires_is_none(make_backend, db_path):
    backend = make_backend(result_expires=None)
    await backend.astore_result("t", 1, states.SUCCESS)
    assert rows(db_path, "SELECT expires_at FROM celery_taskmeta") == [(None,)]


async def test_expired_results_read_as_pending_and_are_cleaned_up(make_backend, db_path, monkeypatch):
    backend = make_backend(result_expires=0.2)
    await backend.astore_result("old", 1, states.SUCCESS)
    await backend.astore_result("old2", 1, states.SUCCESS)
    assert (await backend.aget_task_meta("old"))["status"] == states.SUCCESS
    await asyncio.sleep(0.3)  # past result_expires
    assert (await backend.aget_task_meta("old"))["status"] == states.PENDING
    # An expired SUCCESS no longer guards its id.
    await backend.astore_result("old", None, states.STARTED)
    assert (await backend.aget_task_meta("old"))["status"] == states.STARTED
    assert await backend.acleanup() == 1  # old2
    await asyncio.sleep(0.3)
    monkeypatch.setattr(database, "CLEANUP_INTERVAL", 0.0)
    backend._next_cleanup = 0.0
    await backend.astore_result("new", 1, states.SUCCESS)  # a write cleans up lazily
    assert rows(db_path, "SELECT task_id FROM celery_taskmeta") == [("new",)]


# -- waiting --------------------------------------------------------------------------------


async def test_await_ready_returns_at_once_when_already_stored(backend):
    await backend.astore_result("t", 5, states.SUCCESS)
    assert (await backend.await_ready("t", 0))["result"] == 5
    assert (await backend.await_ready("t", 1))["result"] == 5


async def test_await_ready_raises_timeout(backend):
    await backend.astore_result("t", None, states.STARTED)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await backend.await_ready("t", 0.2)
    assert time.monotonic() - started >= 0.2
    with pytest.raises(TimeoutError):
        await backend.await_ready("t", 0)


async def test_write_in_this_process_wakes_the_waiter(backend):
    wakeup = wakeup_for(f"{backend.db.path}#celery_taskmeta")
    waiter = asyncio.create_task(backend.await_ready("t", 5))
    await asyncio.sleep(0.05)
    await backend.astore_result("t", None, states.STARTED)  # not ready: keeps waiting
    await asyncio.sleep(0.05)
    assert not waiter.done()
    ticket = wakeup.ticket()
    started = time.monotonic()
    await asyncio.to_thread(backend.store_result, "t", 7, states.SUCCESS)
    assert wakeup.ticket() > ticket  # every write notifies this process's waiters
    assert (await waiter)["result"] == 7
    assert time.monotonic() - started < 1


async def test_failure_wakes_the_waiter_with_the_exception(backend):
    waiter = asyncio.create_task(backend.await_ready("t", 5))
    await asyncio.sleep(0.02)
    await backend.astore_result("t", Boom("no"), states.FAILURE)
    meta = await waiter
    assert meta["status"] == states.FAILURE and isinstance(meta["result"], Boom)


async def test_many_waiters_on_one_loop(backend):
    waiters = [asyncio.create_task(backend.await_ready(f"w{i % 50}", 5)) for i in range(100)]
    await asyncio.sleep(0.02)
    await backend.astore_many([(f"w{i}", backend.prepare_meta(f"w{i}", states.SUCCESS, i))
                               for i in range(50)])
    assert [m["result"] for m in await asyncio.gather(*waiters)] == [i % 50 for i in range(100)]


_WRITER = """
import sys, time
from celery import Celery
app = Celery("t", backend=sys.argv[1])
prefix, count = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    app.backend.store_result(f"{prefix}{i}", i, "SUCCESS")
app.close()
"""


def start_writer(db_path: Path, prefix: str, count: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_WRITER), f"db+sqlite:///{db_path}", prefix,
         str(count)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def go(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


async def test_results_written_by_other_processes_wake_waiters(backend):
    await backend.ping()
    writers = await asyncio.gather(*(asyncio.to_thread(start_writer, Path(backend.db.path), p, 100)
                                     for p in ("a", "b")))
    waiters = [asyncio.create_task(backend.await_ready(f"{p}{i}", 20))
               for p in ("a", "b") for i in (0, 50, 99)]
    await asyncio.sleep(0.05)
    for proc in writers:  # both write at the same time
        go(proc)
    metas = await asyncio.gather(*waiters)
    assert [m["result"] for m in metas] == [0, 50, 99] * 2
    for proc in writers:
        assert await asyncio.to_thread(proc.wait, 20) == 0
    raws = await backend.aget_many_raw([f"{p}{i}" for p in ("a", "b") for i in range(100)])
    assert all(raw is not None for raw in raws.values())


def test_concurrent_writers_in_threads_and_their_own_loops(backend):
    errors: list[BaseException] = []

    def write(n: int) -> None:
        async def run() -> None:
            for i in range(40):
                await backend.astore_result(f"t{n}-{i}", [n, i], states.SUCCESS)

        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    for n in range(6):
        for i in (0, 39):
            assert backend.get_task_meta(f"t{n}-{i}")["result"] == [n, i]


def test_sync_front_from_a_plain_thread(backend):
    backend.store_result("s", 3, states.SUCCESS)
    assert backend.wait_for("s", timeout=1)["result"] == 3
    assert backend.get_task_meta("s")["status"] == states.SUCCESS
    backend.forget("s")
    assert backend.get_task_meta("s")["status"] == states.PENDING
    assert backend.cleanup() == 0


def test_close_is_idempotent_and_the_backend_reopens(backend):
    backend.store_result("c", 1, states.SUCCESS)
    backend.close()
    backend.close()
    assert backend.get_task_meta("c")["result"] == 1


# -- bad files ------------------------------------------------------------------------------


async def test_corrupt_file_is_reported_as_not_a_database(make_backend, db_path):
    db_path.write_bytes(b"this is not a database" * 200)
    backend = make_backend()
    with pytest.raises(ImproperlyConfigured, match="not a valid SQLite database") as info:
        await backend.ping()
    assert str(db_path) in str(info.value)


async def test_missing_directory_is_one_clear_error(tmp_path):
    app = Celery("t", backend=f"db+sqlite:///{tmp_path}/nowhere/r.db")
    try:
        with pytest.raises(ImproperlyConfigured, match="nowhere does not exist"):
            await app.backend.astore_result("t", 1, states.SUCCESS)
    finally:
        app.close()


async def test_locked_database_is_connection_lost(make_backend, db_path):
    backend = make_backend(result_backend_transport_options={"busy_timeout": 0.1})
    await backend.astore_result("t", 1, states.SUCCESS)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConnectionLost, match="database is locked"):
            await backend.astore_result("u", 1, states.SUCCESS)
        # WAL: readers are not blocked by the writer.
        assert (await backend.aget_task_meta("t"))["result"] == 1
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await backend.astore_result("u", 2, states.SUCCESS)
    assert (await backend.aget_task_meta("u"))["result"] == 2


async def test_a_new_thread_reads_while_another_connection_writes(make_backend, db_path):
    """A thread's first connection to an existing file does not wait for the write lock
    (creating the schema only when it is missing): under WAL, it reads while another
    connection holds a write transaction. It used to time out there, now and then, when
    the read went to an I/O thread that had not connected yet."""
    backend = make_backend(result_backend_transport_options={"busy_timeout": 0.1})
    await backend.astore_result("t", 1, states.SUCCESS)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    got: list[object] = []
    try:
        def read() -> None:  # on this new thread's own connection
            got.append(backend.db.read("test", lambda c: c.execute(
                "SELECT COUNT(*) FROM celery_taskmeta").fetchone()[0]))

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(10)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert got == [1]
