"""Canvas benchmark app (bench/canvas.py): importable by celery-asyncio and upstream Celery.

No-op members, a sum body, a chain step, and members that do real work: two Redis round
trips (INCR, GET) with the blocking client of whichever library is installed (valkey-py
for ours, redis-py for upstream), or about 1 ms of the thread's CPU time.
"""

import os
import threading
import time
from urllib.parse import urlsplit

from celery import Celery

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/13")

app = Celery("canvasbench", broker=URL, backend=URL)
app.conf.result_expires = 600  # a safety net for a run killed before its clean-up

try:
    import valkey as _client_lib
except ImportError:  # upstream's venv: redis-py
    import redis as _client_lib  # type: ignore[no-redef]

_url = urlsplit(URL)
_DB = dict(host=_url.hostname, port=_url.port or 6379, db=int(_url.path[1:] or 0))
# One blocking client per process: its connection pool is thread-safe (it locks itself).
_client = _client_lib.Redis(**_DB)
WORK_KEYS = 16


def _redis_work(i):
    key = f"canvas-bench:work:{i % WORK_KEYS}"
    _client.incr(key)
    return int(_client.get(key))


def _burn(seconds):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


@app.task(name="canvas.echo")
def echo(x=None):
    return x


@app.task(name="canvas.add")
def add(x, y):
    return x + y


@app.task(name="canvas.tsum")
def tsum(values):
    return sum(v for v in values if v is not None)


@app.task(name="canvas.redis_work")
def redis_work(i):
    return _redis_work(i)


@app.task(name="canvas.cpu_work")
def cpu_work(i, ms=1.0):
    _burn(ms / 1000)
    return i


if getattr(app.conf, "worker_loop_workers", None) is not None:  # celery-asyncio only
    import valkey.asyncio as _aclient_lib

    # One asyncio client per event loop (a client is bound to the loop that made it);
    # _aclients_lock guards the dict, which loop worker threads share.
    _aclients: dict = {}
    _aclients_lock = threading.Lock()

    def _aclient():
        import asyncio

        loop = asyncio.get_running_loop()
        with _aclients_lock:
            client = _aclients.get(loop)
            if client is None:
                client = _aclients[loop] = _aclient_lib.Valkey(**_DB)
        return client

    @app.task(name="canvas.aecho")
    async def aecho(x=None):
        return x

    @app.task(name="canvas.aadd")
    async def aadd(x, y):
        return x + y

    @app.task(name="canvas.aredis_work")
    async def aredis_work(i):
        client = _aclient()
        key = f"canvas-bench:work:{i % WORK_KEYS}"
        await client.incr(key)
        return int(await client.get(key))
