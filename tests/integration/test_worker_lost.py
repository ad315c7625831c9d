"""``reject_on_worker_lost`` for ``acks_late`` tasks a cold shutdown cuts off, on the real
Redis: explicitly False fails them with WorkerLostError and acks them (Celery's rule);
True, or unset, puts the message back in the queue (nothing is lost)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from celery import Celery, states
from celery.exceptions import WorkerLostError

from ..conftest import flushed_redis_url
from .worker_harness import running_worker

REDIS_DB = 1


@pytest.mark.parametrize("setting", [False, True, None])
def test_cold_shutdown_and_reject_on_worker_lost(setting):
    url = flushed_redis_url(REDIS_DB)
    app = Celery(f"lost{uuid.uuid4().hex}", broker=url, backend=url)
    started: list[str] = []

    @app.task(name="lost.long", acks_late=True, reject_on_worker_lost=setting)
    async def long(key):
        started.append(key)
        await asyncio.sleep(30)

    try:
        with running_worker(app, loop_workers=1, loop_concurrency=5, sync_workers=1) as worker:
            result = long.delay("k")
            deadline = time.monotonic() + 10
            while not started:
                assert time.monotonic() < deadline, "the task did not start"
                time.sleep(0.02)
            consumer, loop = worker._consumer, worker._loop
            assert consumer is not None and loop is not None
            loop.call_soon_threadsafe(consumer.cold_stop)
        waiting = app.portal.call(app.transport.queue_length("celery"))
        import valkey

        raw = valkey.Valkey.from_url(url)
        assert raw.hlen("unacked") == 0  # acked, or back in the queue: nothing left reserved
        raw.close()
        if setting is False:
            assert waiting == 0 and result.state == states.FAILURE
            assert isinstance(result.result, WorkerLostError)
        else:
            assert waiting == 1 and result.state == states.PENDING
    finally:
        app.close()
