"""``--loop-inline``: async def tasks on the consumer's own event loop, against real Redis.

The loop worker is then the worker's main loop (here the harness's ``test-worker`` thread,
which runs ``Worker.run``), with no thread of its own. Everything a loop worker thread does
must still hold: each task sees its own request, time limits cancel it, a sync ``delay()``
from inside works, sync tasks still run on their threads.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from celery import Celery
from celery.exceptions import ImproperlyConfigured, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker import Worker

from .worker_harness import running_worker

REDIS_DB = 4  # test_worker.py's database: modules run one after the other


def make_app(url: str) -> Celery:
    app = Celery("inline", broker=url, backend=url)

    @app.task(name="inline.where", bind=True)
    async def where(self, delay):
        await asyncio.sleep(delay)
        return [threading.current_thread().name, self.request.id, self.request.args[0]]

    @app.task(name="inline.sync_where")
    def sync_where():
        return threading.current_thread().name

    @app.task(name="inline.soft", soft_time_limit=0.3)
    async def soft():
        await asyncio.sleep(5)
        return "never"

    @app.task(name="inline.stubborn", time_limit=0.5)
    async def stubborn():
        for _ in range(2):  # swallows the first cancellation
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass
        return "never"

    @app.task(name="inline.spawns", bind=True)
    async def spawns(self):
        child = sync_where.delay()  # the sync API, from the consumer's own thread
        return [child.id, self.request.id]

    @app.task(name="inline.blocks")
    async def blocks(seconds):
        time.sleep(seconds)  # blocks its loop: here, the consumer's
        return time.time()

    @app.task(name="inline.sync_finished_at")
    def sync_finished_at():
        return time.time()

    return app


@pytest.fixture
def app(redis_url):
    app = make_app(redis_url)
    with running_worker(app, loop_workers=1, loop_concurrency=200, sync_workers=2,
                        loop_inline=True) as worker:
        assert worker.loop_inline
        yield app
    app.close()


def test_async_tasks_run_on_the_consumers_thread_each_with_its_own_request(app):
    where = app.tasks["inline.where"]
    rng = random.Random(3)
    delays = [rng.random() * 0.03 for _ in range(300)]  # finishing out of order
    results = [where.delay(delay) for delay in delays]
    seen = [r.get(timeout=30) for r in results]
    assert {thread for thread, _, _ in seen} == {"test-worker"}  # the thread running Worker.run
    assert [(task_id, arg) for _, task_id, arg in seen] == list(zip([r.id for r in results],
                                                                  delays, strict=True))
    sync_thread = app.tasks["inline.sync_where"].delay().get(timeout=10)
    assert sync_thread.startswith("sync-worker-")


def test_soft_and_hard_time_limits_cancel_inline_tasks(app):
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        app.tasks["inline.soft"].delay().get(timeout=10)
    with pytest.raises(TimeLimitExceeded):
        app.tasks["inline.stubborn"].delay().get(timeout=10)
    assert time.monotonic() - started < 5
    # The slot of the abandoned task is free again and the loop still serves.
    assert app.tasks["inline.where"].delay(0).get(timeout=5)[0] == "test-worker"


def test_sync_delay_inside_an_inline_task(app):
    child_id, parent_id = app.tasks["inline.spawns"].delay().get(timeout=10)
    assert app.AsyncResult(child_id).get(timeout=10).startswith("sync-worker-")
    assert parent_id


def test_a_task_that_blocks_the_loop_holds_up_the_consumer(app):
    # The documented price of inline: the consumer's loop is blocked too, so even a def task
    # sent meanwhile is not fetched until the blocking one yields (with a loop worker thread
    # it would run on a sync thread at once).
    blocked = app.tasks["inline.blocks"].delay(0.5)
    time.sleep(0.1)  # it has started
    other = app.tasks["inline.sync_finished_at"].delay()
    blocked_until = blocked.get(timeout=10)
    assert other.get(timeout=10) >= blocked_until


def test_inline_needs_exactly_one_loop_worker(redis_url):
    app = make_app(redis_url)
    with pytest.raises(ImproperlyConfigured, match="exactly one loop worker"):
        Worker(app, loop_workers=2, loop_inline=True)
    assert "(inline)" in Worker(app, loop_workers=1, loop_inline=True).concurrency_text
    app.conf.worker_loop_inline = True
    assert Worker(app, loop_workers=1).loop_inline
    app.close()
