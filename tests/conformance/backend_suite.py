"""The behaviour every result backend must have. Each backend's test class subclasses
``BackendSuite`` and says how to make a fresh, empty backend URL.

Everything goes through the public API: ``app.backend`` (store/get/forget/wait) and
``AsyncResult`` (``get``, ``await``), as a user's code would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from celery import Celery, states
from celery.exceptions import TimeoutError

ROOT = Path(__file__).resolve().parents[2]


class AppError(Exception):
    """An application exception, to round-trip through a backend."""


class BackendSuite:
    """Subclasses define ``make_url``; may turn ``multiprocess`` off, and lower
    ``delete_many`` (results ``adelete_many`` deletes: more than one chunk of each backend's)."""

    multiprocess = True
    delete_many = 1203

    def make_url(self, tmp_path: Path) -> str:
        raise NotImplementedError

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return self.make_url(tmp_path)

    @pytest.fixture
    def app(self, url: str):
        app = Celery("conformance", broker="memory://", backend=url)
        yield app
        app.close()

    # -- store / get / forget -----------------------------------------------------------------

    async def test_missing_result_is_pending(self, app):
        meta = await app.backend.aget_task_meta(str(uuid.uuid4()))
        assert meta["status"] == states.PENDING and meta["result"] is None

    async def test_store_then_read_back(self, app):
        tid = str(uuid.uuid4())
        value = {"n": 1, "s": "héllo", "l": [1, 2.5, None, True], "nested": {"a": []}}
        await app.backend.astore_result(tid, value, states.SUCCESS)
        meta = await app.backend.aget_task_meta(tid)
        assert meta["status"] == states.SUCCESS
        assert meta["result"] == value
        assert meta["task_id"] == tid
        assert dt.datetime.fromisoformat(meta["date_done"]).tzinfo is not None
        result = app.AsyncResult(tid)
        assert await result == value
        assert result.successful() and result.ready()

    def test_sync_api_from_plain_threads(self, app):
        tid = str(uuid.uuid4())
        app.backend.store_result(tid, 42, states.SUCCESS)
        assert app.AsyncResult(tid).get(timeout=5) == 42
        assert app.AsyncResult(tid).state == states.SUCCESS

    async def test_large_result(self, app):
        tid = str(uuid.uuid4())
        big = "y" * (1 << 20)
        await app.backend.astore_result(tid, big, states.SUCCESS)
        assert await app.AsyncResult(tid).aget(timeout=5) == big

    async def test_forget(self, app):
        tid = str(uuid.uuid4())
        await app.backend.astore_result(tid, 1, states.SUCCESS)
        await app.AsyncResult(tid).aforget()
        assert (await app.backend.aget_task_meta(tid))["status"] == states.PENDING

    async def test_delete_many(self, app):
        kept, *gone = [str(uuid.uuid4()) for _ in range(self.delete_many)]
        await app.backend.astore_many([(tid, app.backend.prepare_meta(
            tid, states.SUCCESS, 1, None)) for tid in [kept, *gone]])
        await app.backend.adelete_many(gone)
        await app.backend.adelete_many([])
        middle = gone[len(gone) // 2]
        metas = await app.backend.aget_many_meta([kept, gone[0], middle, gone[-1]])
        assert [metas[t]["status"] for t in (kept, gone[0], middle, gone[-1])] == [
            states.SUCCESS, states.PENDING, states.PENDING, states.PENDING]

    async def test_custom_state_with_meta(self, app):
        tid = str(uuid.uuid4())
        await app.backend.astore_result(tid, {"current": 3, "total": 10}, "PROGRESS")
        result = app.AsyncResult(tid)
        assert result.state == "PROGRESS"
        assert result.info == {"current": 3, "total": 10}
        assert not result.ready()

    async def test_success_is_never_overwritten(self, app):
        tid = str(uuid.uuid4())
        await app.backend.astore_result(tid, "done", states.SUCCESS)
        await app.backend.astore_result(tid, None, states.STARTED)
        meta = await app.backend.aget_task_meta(tid)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, "done")

    async def test_later_states_replace_earlier_ones(self, app):
        tid = str(uuid.uuid4())
        await app.backend.astore_result(tid, None, states.STARTED)
        await app.backend.astore_result(tid, 7, states.SUCCESS)
        assert (await app.backend.aget_task_meta(tid))["result"] == 7

    # -- exceptions ---------------------------------------------------------------------------

    async def test_exceptions_round_trip(self, app):
        tid = str(uuid.uuid4())
        await app.backend.astore_result(tid, AppError("it broke", 3), states.FAILURE,
                                        traceback="Traceback (most recent call last): ...")
        result = app.AsyncResult(tid)
        with pytest.raises(AppError) as info:
            await result.aget(timeout=5)
        assert info.value.args == ("it broke", 3)
        assert result.failed() and result.traceback.startswith("Traceback")
        assert isinstance(await result.aget(propagate=False), AppError)

    async def test_builtin_exception_round_trip(self, app):
        tid = str(uuid.uuid4())
        await app.backend.astore_result(tid, KeyError("missing"), states.FAILURE)
        with pytest.raises(KeyError):
            app.AsyncResult(tid).get(timeout=5)

    # -- expiry ---------------------------------------------------------------------------------

    async def test_results_expire(self, url):
        app = Celery("conformance-expiry", broker="memory://", backend=url, result_expires=1)
        try:
            tid = str(uuid.uuid4())
            await app.backend.astore_result(tid, 1, states.SUCCESS)
            stored = time.monotonic()
            assert (await app.backend.aget_task_meta(tid))["status"] == states.SUCCESS
            await asyncio.sleep(1.0)  # result_expires: nothing can be gone before
            deadline = stored + 30  # a backend's clock may count whole seconds
            while (await app.backend.aget_task_meta(tid))["status"] != states.PENDING:
                assert time.monotonic() < deadline, "the result did not expire within 30 s"
                await asyncio.sleep(0.05)
        finally:
            app.close()

    # -- waiting ----------------------------------------------------------------------------------

    async def test_waiter_is_woken_by_a_write_from_another_thread(self, app):
        tid = str(uuid.uuid4())
        timer = threading.Timer(0.2, lambda: app.backend.store_result(tid, "late", states.SUCCESS))
        timer.start()
        try:
            started = time.monotonic()
            assert await app.AsyncResult(tid).aget(timeout=10) == "late"
            assert time.monotonic() - started < 9  # woken, not timed out
        finally:
            timer.join()

    async def test_wait_times_out(self, app):
        with pytest.raises(TimeoutError):
            await app.AsyncResult(str(uuid.uuid4())).aget(timeout=0.3)
        with pytest.raises(TimeoutError):
            app.AsyncResult(str(uuid.uuid4())).get(timeout=0.3)

    async def test_many_waiters_at_once(self, app):
        ids = [str(uuid.uuid4()) for _ in range(50)]
        waiters = [asyncio.ensure_future(app.AsyncResult(t).aget(timeout=10)) for t in ids]
        await asyncio.sleep(0.05)
        await app.backend.astore_many([
            (t, app.backend.prepare_meta(t, states.SUCCESS, i)) for i, t in enumerate(ids)
        ])
        assert await asyncio.gather(*waiters) == list(range(50))

    # -- concurrency --------------------------------------------------------------------------------

    def test_concurrent_writer_threads(self, app):
        def write(n: int) -> None:
            for i in range(25):
                app.backend.store_result(f"w{n}-{i}-{app.main}", [n, i], states.SUCCESS)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for n in range(8):
            for i in range(25):
                assert app.AsyncResult(f"w{n}-{i}-{app.main}").get(timeout=5) == [n, i]

    def test_results_written_by_other_processes(self, app, url):
        if not self.multiprocess:
            pytest.skip("in-process backend: other processes cannot reach it")
        prefix = uuid.uuid4().hex
        children = [
            subprocess.Popen([sys.executable, "-m", "tests.conformance.child", "store", url,
                              "30", f"{prefix}{n}"], cwd=ROOT)
            for n in range(3)
        ]
        waiter = app.AsyncResult(f"{prefix}2-29")
        assert waiter.get(timeout=60) == {"n": 29, "by": f"{prefix}2"}
        for child in children:
            assert child.wait(60) == 0
        for n in range(3):
            for i in range(30):
                assert app.AsyncResult(f"{prefix}{n}-{i}").get(timeout=5) == {"n": i, "by": f"{prefix}{n}"}
