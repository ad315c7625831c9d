"""Benchmark app: importable by celery-asyncio and by upstream Celery alike."""

import os

from celery import Celery

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/13")

app = Celery("bench", broker=URL, backend=URL)


@app.task(name="bench.noop")
def noop():
    return None


if getattr(app.conf, "worker_loop_workers", None) is not None:  # celery-asyncio only

    @app.task(name="bench.anoop")
    async def anoop():
        return None
