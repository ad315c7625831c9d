"""FilesystemBackend on a real directory: upstream's file layout, expiry, waiting, races; and a
worker running on the filesystem broker with file results end to end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from celery import Celery, states
from celery.backends.base import backend_for_url
from celery.backends.filesystem import FilesystemBackend
from celery.exceptions import ConnectionLost, ImproperlyConfigured, TimeoutError

from .worker_harness import running_worker

ROOT = Path(__file__).resolve().parents[2]


class CustomError(Exception):
    """Defined here so the round trip finds it by module and name."""


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def make_app(results: Path):
    made: list[Celery] = []

    def make(**conf) -> Celery:
        app = Celery(
            "fstest", broker="memory://", backend=f"file://{results}", set_as_current=False, **conf
        )
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


@pytest.fixture
def backend(make_app) -> FilesystemBackend:
    backend = make_app().backend
    assert isinstance(backend, FilesystemBackend)
    return backend


def new_id() -> str:
    return str(uuid.uuid4())


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- storing and reading ---------------------------------------------------------------------


async def test_store_get_forget_in_upstreams_file_layout(backend, results):
    task_id = new_id()
    assert (await backend.aget_task_meta(task_id))["status"] == states.PENDING
    await backend.astore_result(task_id, {"answer": 42}, states.SUCCESS)
    assert files(results) == [f"celery-task-meta-{task_id}"]
    stored = json.loads((results / f"celery-task-meta-{task_id}").read_bytes())
    assert list(stored)[:2] == ["status", "result"] and stored["task_id"] == task_id
    meta = await backend.aget_task_meta(task_id)
    assert meta["status"] == states.SUCCESS and meta["result"] == {"answer": 42}
    assert backend.get_task_meta(task_id)["result"] == {"answer": 42}  # the sync front
    await backend.aforget(task_id)
    await backend.aforget(task_id)  # forgetting twice is fine
    assert files(results) == []
    assert (await backend.aget_task_meta(task_id))["status"] == states.PENDING


async def test_reads_a_result_file_upstream_wrote(backend, results):
    task_id = new_id()
    meta = {
        "status": "SUCCESS",
        "result": [1, 2],
        "traceback": None,
        "children": [],
        "date_done": "2024-01-01T00:00:00+00:00",
        "task_id": task_id,
    }
    (results / f"celery-task-meta-{task_id}").write_text(json.dumps(meta))
    assert (await backend.aget_task_meta(task_id))["result"] == [1, 2]


def test_url_forms_and_registry(tmp_path, make_app):
    app = make_app()
    assert isinstance(backend_for_url(f"file://localhost{tmp_path}/a", app.conf), FilesystemBackend)
    assert (tmp_path / "a").is_dir()
    with pytest.raises(ImproperlyConfigured, match="file:///path/to/dir"):
        backend_for_url("file://", app.conf)


async def test_a_stored_success_is_never_overwritten(backend):
    task_id = new_id()
    await backend.astore_result(task_id, "done", states.SUCCESS)
    await backend.astore_result(task_id, None, states.STARTED)
    await backend.astore_result(task_id, ValueError("late"), states.FAILURE)
    meta = await backend.aget_task_meta(task_id)
    assert meta["status"] == states.SUCCESS and meta["result"] == "done"
    other = new_id()  # other states replace each other
    await backend.astore_result(other, None, states.STARTED)
    await backend.astore_result(other, 7, states.SUCCESS)
    assert (await backend.aget_task_meta(other))["result"] == 7


async def test_exceptions_round_trip(backend):
    task_id = new_id()
    await backend.astore_result(
        task_id, CustomError("bad", 3), states.FAILURE, traceback="Traceback..."
    )
    meta = await backend.aget_task_meta(task_id)
    assert meta["status"] == states.FAILURE and meta["traceback"] == "Traceback..."
    assert isinstance(meta["result"], CustomError) and meta["result"].args == ("bad", 3)
    builtin = new_id()
    await backend.astore_result(builtin, KeyError("k"), states.FAILURE)
    assert isinstance((await backend.aget_task_meta(builtin))["result"], KeyError)


async def test_expired_results_read_as_pending_and_are_cleaned_up(make_app, results):
    backend = make_app(result_expires=60).backend
    old, fresh = new_id(), new_id()
    await backend.astore_result(old, 1, states.SUCCESS)
    await backend.astore_result(fresh, 2, states.SUCCESS)
    an_hour_ago = time.time() - 3600
    os.utime(results / f"celery-task-meta-{old}", (an_hour_ago, an_hour_ago))
    assert (await backend.aget_task_meta(old))["status"] == states.PENDING
    assert files(results) == [f"celery-task-meta-{fresh}"]  # deleted when read
    await backend.astore_result(old, 3, states.SUCCESS)  # an expired SUCCESS can be replaced
    assert (await backend.aget_task_meta(old))["result"] == 3
    third = new_id()
    await backend.astore_result(third, 4, states.SUCCESS)
    stale_tmp = results / ".celery-tmp-0123.tmp"
    stale_tmp.write_bytes(b"{")
    for path in (results / f"celery-task-meta-{third}", stale_tmp):
        os.utime(path, (an_hour_ago - 7200, an_hour_ago - 7200))
    assert await backend.acleanup() == 1
    assert files(results) == sorted([f"celery-task-meta-{old}", f"celery-task-meta-{fresh}"])
    assert backend.cleanup() == 0


def test_a_directory_that_cannot_be_made_is_one_clear_error(tmp_path, make_app):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ImproperlyConfigured, match=re.escape(str(blocker))):
        backend_for_url(f"file://{blocker}", make_app().conf)


async def test_a_directory_gone_at_runtime_is_connection_lost(backend, results):
    await backend.ping()
    results.rmdir()
    for call in (backend.ping(), backend.astore_result(new_id(), 1, states.SUCCESS)):
        with pytest.raises(ConnectionLost, match=re.escape(str(results))):
            await call


# -- waiting ---------------------------------------------------------------------------------


async def test_await_ready_is_woken_by_a_write_in_this_process(backend):
    task_id = new_id()
    await backend.astore_result(task_id, None, states.STARTED)
    loop = asyncio.get_running_loop()
    loop.call_later(
        0.2,
        lambda: threading.Thread(
            target=backend.store_result, args=(task_id, "woken", states.SUCCESS)
        ).start(),
    )
    started = time.monotonic()
    meta = await backend.await_ready(task_id, timeout=10)
    assert meta["result"] == "woken"
    assert time.monotonic() - started < 5
    with pytest.raises(TimeoutError):
        await backend.await_ready(new_id(), timeout=0.05)


STORER = """
import sys
from celery import Celery
app = Celery("child", broker="memory://", backend=sys.argv[1], set_as_current=False)
app.backend.store_result(sys.argv[2], "from another process", "SUCCESS")
app.close()
"""


async def test_await_ready_sees_a_write_by_another_process(backend, results):
    task_id = new_id()
    waiting = asyncio.ensure_future(backend.await_ready(task_id, timeout=20))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STORER, f"file://{results}", task_id, cwd=ROOT
    )
    assert await proc.wait() == 0
    meta = await waiting
    assert meta["result"] == "from another process"


def test_concurrent_writers_in_threads(backend, results):
    ids = [new_id() for _ in range(40)]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for task_id in ids:
                backend.store_result(task_id, None, states.STARTED)
                backend.store_result(task_id, n, states.SUCCESS)
                backend.store_result(task_id, None, states.RETRY)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    for task_id in ids:
        meta = backend.get_task_meta(task_id)
        assert meta["status"] == states.SUCCESS and meta["result"] in range(6)
    assert files(results) == sorted(f"celery-task-meta-{t}" for t in ids)  # no temp file left


# -- end to end ------------------------------------------------------------------------------


def test_worker_on_the_filesystem_broker_with_file_results(tmp_path):
    app = Celery(
        "fsworker",
        broker=f"filesystem://{tmp_path / 'q'}",
        backend=f"file://{tmp_path / 'r'}",
        set_as_current=False,
    )

    @app.task
    def add(x, y):
        return x + y

    @app.task
    async def aadd(x, y):
        await asyncio.sleep(0.01)
        return x + y

    @app.task
    def fail(message):
        raise KeyError(message)

    try:
        with running_worker(app, loop_workers=1, sync_workers=2):
            assert add.delay(2, 3).get(timeout=10) == 5
            assert aadd.delay(20, 22).get(timeout=10) == 42
            many = [aadd.delay(i, i) for i in range(30)] + [add.delay(i, 1) for i in range(30)]
            assert [r.get(timeout=20) for r in many] == [2 * i for i in range(30)] + [
                i + 1 for i in range(30)
            ]
            with pytest.raises(KeyError, match="nope"):
                fail.delay("nope").get(timeout=10)
        leftover = [p for p in (tmp_path / "q").rglob("*") if p.is_file()]
        assert leftover == []  # every message acked
        assert len(list((tmp_path / "r").glob("celery-task-meta-*"))) == 63
    finally:
        app.close()
