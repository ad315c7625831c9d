"""SQLiteTransport on real files: ordering, settling, ETA, recovery, processes, bad files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from celery import Celery
from celery.exceptions import ConnectionLost, ImproperlyConfigured
from celery.messaging.protocol import Message, build_task_message
from celery.transport import base
from celery.transport.registry import transport_for_url
from celery.transport.sqlite import SQLiteTransport

from .worker_harness import running_worker

SRC = str(Path(__file__).resolve().parents[2] / "src")


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"  # path is absolute: sqlite:////tmp/...


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "b.db"


@pytest.fixture
async def transport(db_path: Path):
    t = transport_for_url(url_of(db_path))
    yield t
    await t.aclose()
    t.close()


def task(*args, **options) -> Message:
    return build_task_message("proj.tasks.add", args, **options)


def args_of(deliveries) -> list:
    return [json.loads(d.message.body)[0][0] for d in deliveries]


def rows(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def run_python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, text=True)


# -- basics ---------------------------------------------------------------------------------


async def test_registered_for_sqlite_urls_with_its_capabilities(transport):
    assert isinstance(transport, SQLiteTransport)
    assert isinstance(transport, base.Transport)
    assert {base.CAP_PRIORITY, base.CAP_VISIBILITY_TIMEOUT, base.CAP_DELAYED} <= transport.capabilities


async def test_publish_fetch_ack_round_trip_keeps_the_message(transport, db_path):
    sent = task(2, 3, reply_to="reply-here")
    transport.publish(sent)
    [got] = await transport.fetch(["celery"], 10, 1)
    assert got.message.body == sent.body
    assert got.message.headers == sent.headers
    assert got.message.properties["correlation_id"] == sent.headers["id"]
    assert got.message.properties["reply_to"] == "reply-here"
    assert (got.queue, got.redelivered) == ("celery", False)
    assert got.delivery_info == {"exchange": "", "routing_key": "celery", "priority": 0,
                                 "redelivered": False}
    assert await transport.queue_length("celery") == 0  # reserved, not waiting
    [(payload,)] = rows(db_path, "SELECT payload FROM celery_messages")
    assert set(json.loads(payload)) == {"body", "content-encoding", "content-type", "headers",
                                        "properties"}
    await transport.ack([got])
    assert rows(db_path, "SELECT count(*) FROM celery_messages") == [(0,)]


async def test_apublish_many_and_batches_of_at_most_max_count(transport):
    await transport.apublish_many([task(i) for i in range(7)])
    await transport.apublish(task(7))
    first = await transport.fetch(["celery"], 5, 1)
    second = await transport.fetch(["celery"], 5, 1)
    assert args_of(first) == [0, 1, 2, 3, 4] and args_of(second) == [5, 6, 7]


async def test_relative_url_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = SQLiteTransport("sqlite:///sub/../rel.db")
    try:
        assert t.db.path == str(tmp_path / "rel.db")
        t.publish(task(1))
        assert (tmp_path / "rel.db").exists()
    finally:
        t.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite://host/x.db", "sqlite:///x.db?mode=ro", "sqlite:///dir/"])
def test_urls_without_a_database_file_are_improperly_configured(url):
    with pytest.raises(ImproperlyConfigured, match="SQLite URL"):
        SQLiteTransport(url)


def test_bad_options_are_improperly_configured(db_path):
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        SQLiteTransport(url_of(db_path), transport_options={"visibility_timeout": "soon"})


# -- ordering -------------------------------------------------------------------------------


async def test_lower_priority_number_first_then_fifo(transport):
    for i, priority in enumerate([5, 0, 9, 0, 3, None, 5]):
        transport.publish(task(i, priority=priority))
    got = await transport.fetch(["celery"], 10, 1)
    assert args_of(got) == [1, 3, 5, 4, 0, 6, 2]
    assert [d.delivery_info["priority"] for d in got] == [0, 0, 0, 3, 5, 5, 9]


async def test_fifo_across_many_batches(transport):
    await transport.apublish_many([task(i) for i in range(50)])
    seen: list[int] = []
    while len(seen) < 50:
        seen += args_of(await transport.fetch(["celery"], 7, 1))
    assert seen == list(range(50))


async def test_queues_are_read_in_the_given_order(transport):
    transport.publish(task(1, queue="low"))
    transport.publish(task(2, queue="high"))
    transport.publish(task(3, queue="low"))
    got = await transport.fetch(["high", "low", "high"], 10, 1)
    assert args_of(got) == [2, 1, 3] and [d.queue for d in got] == ["high", "low", "low"]
    assert await transport.fetch(["other"], 10, 0) == []


async def test_requeue_puts_messages_first_in_line_marked_redelivered(transport):
    await transport.apublish_many([task(i) for i in range(4)])
    got = await transport.fetch(["celery"], 2, 1)
    await transport.requeue(got)
    again = await transport.fetch(["celery"], 10, 1)
    assert args_of(again) == [0, 1, 2, 3]
    assert [d.redelivered for d in again] == [True, True, False, False]
    assert again[0].message.headers["redelivered"] is True
    assert again[0].delivery_info["redelivered"] is True


async def test_reject_with_requeue_goes_to_the_back(transport):
    await transport.apublish_many([task(i) for i in range(3)])
    first = await transport.fetch(["celery"], 1, 1)
    await transport.reject(first, requeue=True)
    again = await transport.fetch(["celery"], 10, 1)
    assert args_of(again) == [1, 2, 0] and again[-1].redelivered


async def test_reject_without_requeue_dead_letters(transport, db_path):
    transport.publish(task(1))
    got = await transport.fetch(["celery"], 1, 1)
    await transport.reject(got, requeue=False)
    assert await transport.fetch(["celery"], 1, 0) == []
    [(queue, payload, reason)] = transport.dead_letters()
    assert (queue, reason) == ("celery", "rejected")
    assert json.loads(payload)["headers"]["id"] == got[0].message.headers["id"]
    assert rows(db_path, "SELECT count(*) FROM celery_messages") == [(0,)]


async def test_settling_an_old_delivery_after_redelivery_does_nothing(db_path):
    t = SQLiteTransport(url_of(db_path), transport_options={"visibility_timeout": 0})
    try:
        t.publish(task(1))
        [old] = await t.fetch(["celery"], 1, 1)
        assert await t.restore_visible() == 1
        [new] = await t.fetch(["celery"], 1, 1)
        assert new.delivery_tag != old.delivery_tag and new.redelivered
        await t.ack([old])  # the first consumer finishing late must not ack the second's
        await t.reject([old], requeue=True)
        assert rows(db_path, "SELECT count(*) FROM celery_messages WHERE reserved_at IS NOT NULL") == [(1,)]
        await t.ack([new])
        assert rows(db_path, "SELECT count(*) FROM celery_messages") == [(0,)]
    finally:
        t.close()


# -- waiting, ETA, visibility ---------------------------------------------------------------


async def test_fetch_waits_up_to_timeout_then_returns_empty(transport):
    started = time.monotonic()
    assert await transport.fetch(["celery"], 1, 0.2) == []
    assert time.monotonic() - started >= 0.2


async def test_publish_in_this_process_wakes_a_waiting_fetch_at_once(db_path):
    # A long poll interval: only the in-process wake-up can deliver within the bound below.
    t = SQLiteTransport(url_of(db_path), transport_options={"polling_interval": 10})
    try:
        await t.ping()
        fetching = asyncio.create_task(t.fetch(["celery"], 1, 8))
        await asyncio.sleep(0.1)  # let it find nothing and go to sleep
        started = time.monotonic()
        await asyncio.to_thread(t.publish, task(1))
        got = await fetching
        assert args_of(got) == [1] and time.monotonic() - started < 2
    finally:
        t.close()


async def test_message_with_future_eta_is_held_back_until_then(transport, db_path):
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
    transport.publish(task(1, eta=eta))
    transport.publish(task(2))
    assert args_of(await transport.fetch(["celery"], 10, 0)) == [2]
    assert await transport.queue_length("celery") == 1  # waiting for its ETA
    [(visible_at,)] = rows(db_path, "SELECT visible_at FROM celery_messages WHERE reserved_at IS NULL")
    assert visible_at == pytest.approx(eta.timestamp())
    got = await transport.fetch(["celery"], 10, 3)
    assert args_of(got) == [1] and time.time() >= eta.timestamp()


_NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(("eta", "held_back"), [
    ((_NOW - dt.timedelta(minutes=1)).isoformat(), False),  # past: at once
    ((_NOW - dt.timedelta(minutes=1)).replace(tzinfo=None).isoformat(), False),  # naive = UTC
    ((_NOW + dt.timedelta(hours=1)).replace(tzinfo=None).isoformat(), True),
    (_NOW.astimezone(dt.timezone(dt.timedelta(hours=5))).isoformat(), False),  # same instant
    ((_NOW + dt.timedelta(hours=1)).astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat(), True),
    ((_NOW + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z"), True),
    ("not a date", False),  # unreadable: delivered, the worker decides
])
async def test_eta_strings_as_celery_writes_them(transport, eta, held_back):
    transport.publish(task(1, eta=eta))
    got = await transport.fetch(["celery"], 1, 0)
    assert (got == []) is held_back


async def test_restore_visible_returns_expired_reservations_in_order(db_path):
    t = SQLiteTransport(url_of(db_path), transport_options={"visibility_timeout": 0.3})
    try:
        await t.apublish_many([task(i) for i in range(4)])
        got = await t.fetch(["celery"], 3, 1)
        assert await t.restore_visible() == 0
        await asyncio.sleep(0.4)  # past the visibility timeout
        assert await t.restore_visible() == 3
        again = await t.fetch(["celery"], 10, 1)
        assert args_of(again) == [0, 1, 2, 3]
        assert [d.redelivered for d in again] == [True, True, True, False]
        await t.ack(got)  # stale: no effect
        assert rows(db_path, "SELECT count(*) FROM celery_messages") == [(4,)]
    finally:
        t.close()


# -- malformed rows ---------------------------------------------------------------------------


async def test_malformed_rows_are_dead_lettered_and_good_ones_delivered(transport, db_path, caplog):
    transport.publish(task(1))
    good = json.loads(rows(db_path, "SELECT payload FROM celery_messages")[0][0])
    bad_base64 = json.dumps({**good, "body": "@@not base64@@"})
    conn = sqlite3.connect(db_path)
    for payload in ("not json at all", '{"properties": {}}', bad_base64, "[1, 2]"):
        conn.execute("INSERT INTO celery_messages (queue, payload) VALUES ('celery', ?)", (payload,))
    conn.commit()
    conn.close()
    transport.publish(task(2))
    with caplog.at_level(logging.WARNING, logger="celery.transport.sqlite"):
        got = await transport.fetch(["celery"], 10, 1)
    assert args_of(got) == [1, 2]
    dead = transport.dead_letters()
    assert [d[1] for d in dead] == ["not json at all", '{"properties": {}}', bad_base64, "[1, 2]"]
    assert all(d[0] == "celery" and d[2].startswith("malformed: ") for d in dead)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all("'celery'" in w for w in warnings)
    assert "not json at all" in warnings[0]


async def test_only_malformed_rows_waiting_gives_empty_fetch(transport, db_path):
    await transport.ping()
    conn = sqlite3.connect(db_path)
    conn.executemany("INSERT INTO celery_messages (queue, payload) VALUES ('celery', ?)",
                     [("{}",)] * 5)
    conn.commit()
    conn.close()
    assert await transport.fetch(["celery"], 2, 0.1) == []
    assert len(transport.dead_letters()) == 5


# -- management -----------------------------------------------------------------------------


async def test_purge_deletes_waiting_messages_but_not_reserved_ones(transport):
    await transport.apublish_many([task(i) for i in range(5)])
    transport.publish(task(9, queue="other"))
    reserved = await transport.fetch(["celery"], 2, 1)
    assert await transport.queue_length("celery") == 3
    assert await transport.purge("celery") == 3
    assert await transport.queue_length("celery") == 0
    assert await transport.queue_length("other") == 1
    await transport.ack(reserved)


async def test_publish_from_many_threads_loses_nothing(transport):
    def produce(n: int) -> None:
        for i in range(50):
            transport.publish(task(n * 100 + i))

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seen: list[int] = []
    while got := await transport.fetch(["celery"], 100, 0):
        seen += args_of(got)
        await transport.ack(got)
    assert sorted(seen) == sorted(n * 100 + i for n in range(6) for i in range(50))


async def test_close_is_idempotent_and_the_transport_reopens(transport):
    transport.publish(task(1))
    transport.close()
    transport.close()
    await transport.aclose()
    assert args_of(await transport.fetch(["celery"], 1, 1)) == [1]


# -- bad files ------------------------------------------------------------------------------


async def test_missing_or_unusable_directory_is_one_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    for path, problem in [(tmp_path / "nowhere" / "b.db", "does not exist"),
                          (tmp_path / "a-file" / "b.db", "is not a directory"),
                          (tmp_path, "is a directory")]:
        t = SQLiteTransport(url_of(path))
        with pytest.raises(ImproperlyConfigured, match=problem) as info:
            await t.ping()
        assert str(path) in str(info.value)
        with pytest.raises(ImproperlyConfigured, match=problem):
            t.publish(task(1))
        t.close()


async def test_corrupt_file_is_reported_as_not_a_database(db_path):
    db_path.write_bytes(os.urandom(4096))
    t = SQLiteTransport(url_of(db_path))
    try:
        with pytest.raises(ImproperlyConfigured, match="not a valid SQLite database") as info:
            await t.ping()
        assert str(db_path) in str(info.value)
        with pytest.raises(ImproperlyConfigured, match="not a valid SQLite database"):
            await t.fetch(["celery"], 1, 0)
    finally:
        t.close()


async def test_database_locked_too_long_is_connection_lost_and_nothing_is_lost(db_path):
    t = SQLiteTransport(url_of(db_path), transport_options={"busy_timeout": 0.1})
    try:
        t.publish(task(1))
        locker = sqlite3.connect(db_path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ConnectionLost, match="database is locked") as info:
            t.publish(task(2))
        assert str(db_path) in str(info.value)
        with pytest.raises(ConnectionLost, match="database is locked"):
            await t.fetch(["celery"], 1, 0)
        locker.execute("ROLLBACK")
        locker.close()
        t.publish(task(2))
        assert args_of(await t.fetch(["celery"], 10, 1)) == [1, 2]
    finally:
        t.close()


# -- several processes ----------------------------------------------------------------------

_PRODUCER = """
import sys
from celery.messaging.protocol import build_task_message
from celery.transport.sqlite import SQLiteTransport
t = SQLiteTransport(sys.argv[1])
start = int(sys.argv[2])
for i in range(start, start + int(sys.argv[3])):
    t.publish(build_task_message("proj.tasks.add", (i,)))
t.close()
"""

_CONSUMER = """
import asyncio, json, sys
from celery.transport.sqlite import SQLiteTransport

async def main():
    t = SQLiteTransport(sys.argv[1])
    idle = 0
    while idle < 5:
        got = await t.fetch(["celery"], 20, 0.2)
        idle = 0 if got else idle + 1
        for d in got:
            print(json.loads(d.message.body)[0][0], flush=True)
        await t.ack(got)
    t.close()

asyncio.run(main())
"""


async def test_two_producer_processes_and_two_consumers_deliver_each_message_once(db_path):
    url = url_of(db_path)
    producers = [run_python(_PRODUCER, url, str(n * 1000), "300") for n in range(2)]
    consumer = run_python(_CONSUMER, url)
    t = SQLiteTransport(url)
    seen: list[int] = []
    try:
        idle = 0
        while idle < 5 or any(p.poll() is None for p in producers):
            got = await t.fetch(["celery"], 20, 0.2)
            idle = 0 if got else idle + 1
            seen += args_of(got)
            await t.ack(got)
        out, _ = await asyncio.to_thread(consumer.communicate, timeout=30)
    finally:
        t.close()
        for p in [*producers, consumer]:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in producers] == [0, 0] and consumer.returncode == 0
    theirs = [int(line) for line in out.split()]
    both = seen + theirs
    assert sorted(both) == sorted([*range(300), *range(1000, 1300)])  # each exactly once
    assert rows(db_path, "SELECT count(*) FROM celery_messages") == [(0,)]


_RESERVER = """
import asyncio, sys, time
from celery.transport.sqlite import SQLiteTransport

async def main():
    t = SQLiteTransport(sys.argv[1])
    got = await t.fetch(["celery"], 3, 5)
    print(len(got), flush=True)
    time.sleep(60)

asyncio.run(main())
"""


async def test_reservations_of_a_killed_consumer_come_back_after_the_visibility_timeout(db_path):
    url = url_of(db_path)
    t = SQLiteTransport(url, transport_options={"visibility_timeout": 0.5})
    try:
        await t.apublish_many([task(i) for i in range(5)])
        child = run_python(_RESERVER, url)
        assert child.stdout is not None
        assert (await asyncio.to_thread(child.stdout.readline)).strip() == "3"
        child.send_signal(signal.SIGKILL)
        child.wait()
        rest = await t.fetch(["celery"], 10, 0)
        assert args_of(rest) == [3, 4]
        await t.ack(rest)
        await asyncio.sleep(0.6)  # past the visibility timeout
        assert await t.restore_visible() == 3
        again = await t.fetch(["celery"], 10, 1)
        assert args_of(again) == [0, 1, 2] and all(d.redelivered for d in again)
    finally:
        t.close()


# -- a real worker --------------------------------------------------------------------------


def make_app(tmp_path: Path, **conf) -> Celery:
    app = Celery("t", broker=f"sqlite:///{tmp_path}/b.db", backend=f"db+sqlite:///{tmp_path}/r.db",
                 **conf)

    @app.task
    def add(x, y):
        return x + y

    @app.task
    async def aadd(x, y):
        await asyncio.sleep(0)
        return x + y

    return app


def test_worker_runs_def_and_async_def_tasks_from_sqlite(tmp_path):
    app = make_app(tmp_path)
    add, aadd = app.tasks[f"{__name__}.add"], app.tasks[f"{__name__}.aadd"]
    try:
        with running_worker(app, loop_workers=1, sync_workers=2):
            assert add.delay(2, 3).get(timeout=10) == 5
            results = [aadd.delay(i, i) for i in range(40)] + [add.delay(i, 1) for i in range(40)]
            assert [r.get(timeout=20) for r in results] == [2 * i for i in range(40)] + [
                i + 1 for i in range(40)]
            eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
            delayed = add.apply_async((1, 1), eta=eta)
            assert delayed.get(timeout=10) == 2 and time.time() >= eta.timestamp()
    finally:
        app.close()
    assert rows(tmp_path / "b.db", "SELECT count(*) FROM celery_messages") == [(0,)]


def test_worker_rides_out_a_locked_broker_database(tmp_path, caplog):
    app = make_app(tmp_path, broker_transport_options={"busy_timeout": 0.05})
    add = app.tasks[f"{__name__}.add"]
    try:
        with running_worker(app, loop_workers=0, sync_workers=1):
            assert add.delay(1, 1).get(timeout=10) == 2
            # Due while another connection holds the write lock: the worker's fetch fails
            # (ConnectionLost), is retried, and gets the message once the lock is gone.
            delayed = add.apply_async((2, 2), eta=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2))
            locker = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            with caplog.at_level(logging.WARNING, logger="celery.worker.consumer"):
                time.sleep(0.8)
                locker.execute("ROLLBACK")
                locker.close()
                assert delayed.get(timeout=10) == 4
            assert any("database is locked" in r.getMessage() for r in caplog.records)
    finally:
        app.close()
