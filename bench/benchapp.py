"""Benchmark app: importable by celery-asyncio and by upstream Celery alike.

``BENCH_URL`` names the Redis for broker and results; ``BENCH_TRANSPORT_OPTIONS`` (JSON)
adds broker transport options, e.g. ``{"publish_pipeline": true}`` to measure one publish
mode on trees whose defaults differ.
"""

import json
import os

from celery import Celery

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/13")

app = Celery("bench", broker=URL, backend=URL,
             broker_transport_options=json.loads(os.environ.get("BENCH_TRANSPORT_OPTIONS")
                                                 or "{}"))


@app.task(name="bench.noop")
def noop():
    return None


if getattr(app.conf, "worker_loop_workers", None) is not None:  # celery-asyncio only

    @app.task(name="bench.anoop")
    async def anoop():
        return None
