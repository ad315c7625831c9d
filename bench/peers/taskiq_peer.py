"""taskiq app and producer for bench/peers/harness.py.

taskiq-redis: ``RedisStreamBroker`` (Redis streams with a consumer group, messages acknowledged:
the taskiq-redis broker with delivery guarantees comparable to Celery's) and
``RedisAsyncResultBackend``. Tasks are ``async def``; the I/O task awaits ``asyncio.sleep``,
call makes one INCR with redis-py's asyncio client (redis_call.py), mix 0.2 ms of CPU work
then that INCR, kb1 and kb100 take one string argument of 1 KB or 100 KB; no "options" task.
taskiq's worker runs uvloop's loop by itself where uvloop is installed.

The producer sends with ``task.kiq()`` per task, then waits on each in send order with
``wait_result()``, which polls the result backend; its ``check_interval`` is set to
RESULT_POLL_S (1 ms, the same as for arq) instead of the default 200 ms.
"""

from __future__ import annotations

import asyncio
import os
import time
from importlib.metadata import version as dist_version

import redis_call
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/11")
RESULT_POLL_S = 0.001
RESULT_TIMEOUT_S = 60.0
KINDS = frozenset({"noop", "sleep", "call", "kb1", "kb100", "mix"})

broker = RedisStreamBroker(url=URL).with_result_backend(RedisAsyncResultBackend(redis_url=URL))


@broker.task(task_name="bench.noop")
async def noop() -> None:
    return None


@broker.task(task_name="bench.sleep")
async def sleep() -> None:
    await asyncio.sleep(0.01)


@broker.task(task_name="bench.call")
async def call() -> None:
    await redis_call.aincr()


@broker.task(task_name="bench.mix")
async def mix() -> None:
    redis_call.burn()
    await redis_call.aincr()


@broker.task(task_name="bench.payload")
async def payload(data: str) -> None:
    return None


TASKS = {"noop": noop, "sleep": sleep, "call": call, "mix": mix, "kb1": payload,
         "kb100": payload}


def _args(kind: str) -> tuple:
    return (redis_call.PAYLOADS[kind],) if kind in redis_call.PAYLOADS else ()


def version() -> str:
    return f"taskiq {dist_version('taskiq')}, taskiq-redis {dist_version('taskiq-redis')}"


def worker_command(python: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    return [
        python,
        "-m",
        "taskiq",
        "worker",
        "taskiq_peer:broker",
        "--log-level",
        "WARNING",
        *args,
    ], {}


async def _wait(handle) -> None:
    result = await handle.wait_result(check_interval=RESULT_POLL_S, timeout=RESULT_TIMEOUT_S)
    if result.is_err:
        raise RuntimeError(f"task failed: {result.error!r}")


class Producer:
    """Sends with ``kiq()`` and waits with ``wait_result()``, sequentially, on one loop."""

    def __init__(self, url: str) -> None:
        pass

    async def start(self) -> None:
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()

    async def burst(self, kind: str, n: int) -> float:
        task, args = TASKS[kind], _args(kind)
        handles = [await task.kiq(*args) for _ in range(n)]
        t_sent = time.perf_counter()
        for handle in handles:
            await _wait(handle)
        return t_sent

    async def round_trips(self, kind: str, n: int) -> list[float]:
        task, args, samples = TASKS[kind], _args(kind), []
        for _ in range(n):
            start = time.perf_counter()
            await _wait(await task.kiq(*args))
            samples.append(time.perf_counter() - start)
        return samples
