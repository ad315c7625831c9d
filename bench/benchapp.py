"""Benchmark app: importable by celery-asyncio and by upstream Celery alike.

``BENCH_URL`` names the Redis for broker and results; ``BENCH_TRANSPORT_OPTIONS`` (JSON)
adds broker transport options, e.g. ``{"publish_pipeline": true}`` to measure one publish
mode on trees whose defaults differ. ``BENCH_WORKER_INFO`` names a file a worker of this app
appends a JSON line to when it is ready and when it shuts down: its interpreter and whether
the GIL is on (bench/scaling.py reads it).
"""

import json
import os
import platform
import sys
import sysconfig

from celery import Celery, signals

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


def _note_worker(event):
    """Append the worker's interpreter and GIL state to $BENCH_WORKER_INFO (one JSON line; the
    worker's main thread, at ready and at shutdown)."""
    check = getattr(sys, "_is_gil_enabled", None)
    line = {"event": event, "pid": os.getpid(), "version": platform.python_version(),
            "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
            "gil_enabled": True if check is None else bool(check())}
    with open(os.environ["BENCH_WORKER_INFO"], "a") as f:
        f.write(json.dumps(line) + "\n")


if os.environ.get("BENCH_WORKER_INFO"):
    signals.worker_ready.connect(lambda sender=None, **_: _note_worker("ready"), weak=False)
    signals.worker_shutdown.connect(lambda sender=None, **_: _note_worker("shutdown"), weak=False)
