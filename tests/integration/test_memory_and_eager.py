"""In-process use: the memory:// broker, the cache+memory:// backend, and eager mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from celery import Celery, states

from .worker_harness import running_worker

ROOT = Path(__file__).resolve().parents[2]


def make_app(**conf) -> Celery:
    name = uuid.uuid4().hex  # a broker and result store of this test's own
    app = Celery("mem", broker=f"memory://{name}", backend=f"cache+memory://{name}", **conf)

    @app.task(name="mem.add")
    def add(x, y):
        return x + y

    @app.task(name="mem.aadd", bind=True)
    async def aadd(self, x, y):
        await asyncio.sleep(0)
        return [x + y, self.request.id, self.request.is_eager]

    @app.task(name="mem.fail")
    def fail(msg):
        raise ValueError(msg)

    @app.task(name="mem.afail")
    async def afail(msg):
        raise KeyError(msg)

    @app.task(name="mem.nested")
    async def nested():
        inner = await aadd.adelay(1, 2)  # eager inside eager: runs right here
        return inner.get()[0]

    return app


def test_the_guides_hello_world_runs_unchanged():
    out = subprocess.run([sys.executable, "examples/hello_world.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["Task submitted, waiting for result...", "Task result: 10"]


class TestEager:
    def test_delay_runs_in_process_and_returns_a_ready_result(self):
        app = make_app(task_always_eager=True)
        result = app.tasks["mem.add"].delay(4, 6)
        assert result.ready() and result.successful()
        assert result.get(timeout=1) == 10 and result.state == states.SUCCESS
        assert app.portal.call(app.transport.queue_length("celery")) == 0

    def test_async_task_runs_to_completion_from_sync_code(self):
        app = make_app(task_always_eager=True)
        value, task_id, is_eager = app.tasks["mem.aadd"].delay(2, 3).get()
        assert value == 5 and is_eager is True and task_id

    async def test_async_task_is_awaited_on_the_callers_loop(self):
        app = make_app(task_always_eager=True)
        result = await app.tasks["mem.aadd"].adelay(2, 3)
        assert (await result)[0] == 5
        assert (await app.tasks["mem.nested"].adelay()).get() == 3

    def test_failures_are_stored_in_the_result_unless_propagating(self):
        app = make_app(task_always_eager=True)
        result = app.tasks["mem.fail"].delay("nope")
        assert result.failed() and isinstance(result.result, ValueError)
        assert "ValueError: nope" in result.traceback
        with pytest.raises(ValueError, match="nope"):
            result.get()
        assert isinstance(result.get(propagate=False), ValueError)

    def test_task_eager_propagates_raises_at_the_call(self):
        app = make_app(task_always_eager=True, task_eager_propagates=True)
        with pytest.raises(ValueError, match="nope"):
            app.tasks["mem.fail"].delay("nope")
        with pytest.raises(KeyError):
            app.tasks["mem.afail"].apply_async(("x",))

    def test_task_store_eager_result_writes_the_backend(self):
        app = make_app(task_always_eager=True, task_store_eager_result=True)
        result = app.tasks["mem.add"].delay(1, 1)
        assert app.backend.get_task_meta(result.id)["result"] == 2
        assert app.AsyncResult(result.id).get(timeout=1) == 2

    def test_apply_runs_eagerly_without_the_setting(self):
        app = make_app()
        assert app.tasks["mem.add"].apply((5, 5)).get() == 10
        assert app.portal.call(app.transport.queue_length("celery")) == 0


class TestMemoryBrokerWithAWorker:
    def test_sync_and_async_tasks_through_a_real_worker(self):
        app = make_app()
        with running_worker(app, loop_workers=1, loop_concurrency=10, sync_workers=2):
            sync_results = [app.tasks["mem.add"].delay(i, i) for i in range(20)]
            async_results = [app.tasks["mem.aadd"].delay(i, 1) for i in range(20)]
            assert [r.get(timeout=10) for r in sync_results] == [2 * i for i in range(20)]
            got = [r.get(timeout=10) for r in async_results]
            assert [g[0] for g in got] == [i + 1 for i in range(20)]
            assert [g[1] for g in got] == [r.id for r in async_results]
            assert not any(g[2] for g in got)
            with pytest.raises(ValueError, match="boom"):
                app.tasks["mem.fail"].delay("boom").get(timeout=10)
        app.close()

    async def test_async_producer_and_await(self):
        app = make_app()
        with running_worker(app, loop_workers=1, loop_concurrency=10, sync_workers=1):
            results = [await app.tasks["mem.add"].adelay(i, 1) for i in range(10)]
            assert [await r for r in results] == list(range(1, 11))
        app.close()

    def test_other_apps_on_other_memory_urls_are_isolated(self):
        a, b = make_app(), make_app()
        a.tasks["mem.add"].delay(1, 1)
        assert a.portal.call(a.transport.queue_length("celery")) == 1
        assert b.portal.call(b.transport.queue_length("celery")) == 0
        a.close()
        b.close()
