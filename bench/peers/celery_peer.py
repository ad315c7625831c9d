"""Celery app and producer for bench/peers/harness.py: ours (celery-asyncio) and upstream Celery 5.

The same module runs under either package; which one is imported decides the tasks:

* no-op: ``def`` (both), or ``async def`` on ours when BENCH_CELERY_NOOP=async;
* I/O (10 ms sleep): ``async def`` with ``await asyncio.sleep`` on ours (a loop worker),
  ``def`` with ``time.sleep`` on upstream Celery (threads or prefork pool);
* one Redis call: ``def`` (both), an INCR with the process's blocking client (redis_call.py);
* 1 KB and 100 KB argument (kinds kb1, kb100): ``def`` taking one string, returning None;
* options: the no-op sent with ``apply_async(countdown=0, queue=ROUTED_QUEUE, priority=5)``,
  the general send path (an ETA, a route and a priority); the worker also consumes ROUTED_QUEUE
  (``worker_command`` adds ``-Q celery,bench.routed``);
* mix: ``def``, about 0.2 ms of pure-Python CPU work then one INCR (redis_call.py).

The producer is Celery's sync API from one thread: ``delay()`` per task, then ``get()`` on
each result in send order. ``BENCH_TRANSPORT_OPTIONS`` (JSON) sets broker transport options,
e.g. ``{"publish_pipeline": true}`` to compare two installs of ours in one publish mode.
``BENCH_BROKER_URL`` (bench/rabbitmq.py: an ``amqp://`` vhost) puts the broker elsewhere than
the results, which stay on ``BENCH_URL``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import redis_call

import celery
from celery import Celery

ROUTED_QUEUE = "bench.routed"
#: The workload kinds this module's producer sends (bench/peers/harness.py skips others).
KINDS = frozenset({"noop", "sleep", "call", "kb1", "kb100", "options", "mix"})

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/11")
RESULT_TIMEOUT = 60.0  # seconds; the harness notices a dead worker sooner

BROKER_URL = os.environ.get("BENCH_BROKER_URL") or URL
app = Celery("bench_peers", broker=BROKER_URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True
if os.environ.get("BENCH_TRANSPORT_OPTIONS"):  # e.g. {"publish_pipeline": true}, for ours
    app.conf.broker_transport_options = json.loads(os.environ["BENCH_TRANSPORT_OPTIONS"])
OURS = getattr(app.conf, "worker_loop_workers", None) is not None


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.sleep")
def sleep() -> None:
    time.sleep(0.01)


@app.task(name="bench.call")
def call() -> None:
    redis_call.incr()


@app.task(name="bench.payload")
def payload(data: str) -> None:
    return None


@app.task(name="bench.mix")
def mix() -> None:
    redis_call.burn()
    redis_call.incr()


if OURS:

    @app.task(name="bench.anoop")
    async def anoop() -> None:
        return None

    @app.task(name="bench.asleep")
    async def asleep() -> None:
        await asyncio.sleep(0.01)


def version() -> str:
    if OURS:  # our __version__ is the Celery release we follow; ours is __asyncio_version__
        return f"celery-asyncio {celery.__asyncio_version__}"
    return f"celery {celery.__version__}"


def worker_command(python: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    queues = ["-Q", f"celery,{ROUTED_QUEUE}"]
    return [python, "-m", "celery", "-A", "celery_peer", "worker", "-l", "WARNING", *queues,
            *args], {}


class Producer:
    """Sends with ``delay()`` and waits with ``AsyncResult.get()``, sequentially."""

    def __init__(self, url: str) -> None:
        async_noop = OURS and os.environ.get("BENCH_CELERY_NOOP") == "async"
        self.tasks = {
            "noop": app.tasks["bench.anoop" if async_noop else "bench.noop"],
            "sleep": app.tasks["bench.asleep" if OURS else "bench.sleep"],
            "call": app.tasks["bench.call"],
            "kb1": app.tasks["bench.payload"],
            "kb100": app.tasks["bench.payload"],
            "options": app.tasks["bench.noop"],
            "mix": app.tasks["bench.mix"],
        }

    def send(self, kind: str):
        task = self.tasks[kind]
        if kind in redis_call.PAYLOADS:
            return task.delay(redis_call.PAYLOADS[kind])
        if kind == "options":
            return task.apply_async(countdown=0, queue=ROUTED_QUEUE, priority=5)
        return task.delay()

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def burst(self, kind: str, n: int) -> float:
        results = [self.send(kind) for _ in range(n)]
        t_sent = time.perf_counter()
        for result in results:
            result.get(timeout=RESULT_TIMEOUT)
        return t_sent

    def round_trips(self, kind: str, n: int) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            self.send(kind).get(timeout=RESULT_TIMEOUT)
            samples.append(time.perf_counter() - start)
        return samples
