"""arq app and producer for bench/peers/harness.py.

arq keeps jobs and results in Redis itself (a sorted set as the queue). Jobs are
``async def``; the I/O job awaits ``asyncio.sleep``. The worker polls the queue every
``poll_delay`` seconds (default 0.5) and runs up to ``max_jobs`` jobs at once; the arq command
line has no options for these, so the worker options given to ``worker_command``
(``--max-jobs N --poll-delay S``) reach ``WorkerSettings`` through environment variables.

The producer sends with ``pool.enqueue_job()`` per job, then waits on each in send order with
``job.result()``, which polls Redis; its ``poll_delay`` is set to RESULT_POLL_S (1 ms, the same
as for taskiq) instead of the default 500 ms. Jobs: noop, sleep, call (one INCR with redis-py's
asyncio client: redis_call.py), mix (0.2 ms of CPU work, then that INCR), kb1 and kb100 (one
string argument of 1 KB or 100 KB); no "options" job (arq routes by a worker per queue). The
worker's loop is uvloop's where uvloop is installed (arq makes it with
``asyncio.new_event_loop()``, so the policy set here decides).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from importlib.metadata import version as dist_version
from urllib.parse import urlsplit

import redis_call
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import func

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/11")
RESULT_POLL_S = 0.001
RESULT_TIMEOUT_S = 60.0
KINDS = frozenset({"noop", "sleep", "call", "kb1", "kb100", "mix"})

try:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
except ImportError:
    pass

_url = urlsplit(URL)
REDIS = RedisSettings(
    host=_url.hostname or "127.0.0.1",
    port=_url.port or 6379,
    database=int(_url.path.lstrip("/") or 0),
)


async def noop(ctx: dict) -> None:
    return None


async def sleep(ctx: dict) -> None:
    await asyncio.sleep(0.01)


async def call(ctx: dict) -> None:
    await redis_call.aincr()


async def mix(ctx: dict) -> None:
    redis_call.burn()
    await redis_call.aincr()


async def payload(ctx: dict, data: str) -> None:
    return None


JOBS = {"noop": "bench.noop", "sleep": "bench.sleep", "call": "bench.call", "mix": "bench.mix",
        "kb1": "bench.payload", "kb100": "bench.payload"}


def _args(kind: str) -> tuple:
    return (redis_call.PAYLOADS[kind],) if kind in redis_call.PAYLOADS else ()


class WorkerSettings:
    """Read by ``arq arq_peer.WorkerSettings``."""

    functions = [func(noop, name="bench.noop"), func(sleep, name="bench.sleep"),
                 func(call, name="bench.call"), func(mix, name="bench.mix"),
                 func(payload, name="bench.payload")]
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))


def version() -> str:
    return f"arq {dist_version('arq')}"


def worker_command(python: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    parser = argparse.ArgumentParser(prog="arq_peer worker options")
    parser.add_argument("--max-jobs", default="10")
    parser.add_argument("--poll-delay", default="0.5")
    options = parser.parse_args(args)
    env = {"BENCH_ARQ_MAX_JOBS": options.max_jobs, "BENCH_ARQ_POLL_DELAY": options.poll_delay}
    return [python, "-m", "arq", "arq_peer.WorkerSettings"], env


class Producer:
    """Sends with ``enqueue_job()`` and waits with ``job.result()``, sequentially, on one loop."""

    def __init__(self, url: str) -> None:
        self.pool = None

    async def start(self) -> None:
        self.pool = await create_pool(REDIS)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()

    async def burst(self, kind: str, n: int) -> float:
        name, args = JOBS[kind], _args(kind)
        jobs = [await self.pool.enqueue_job(name, *args) for _ in range(n)]
        t_sent = time.perf_counter()
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT_S, poll_delay=RESULT_POLL_S)
        return t_sent

    async def round_trips(self, kind: str, n: int) -> list[float]:
        name, args, samples = JOBS[kind], _args(kind), []
        for _ in range(n):
            start = time.perf_counter()
            job = await self.pool.enqueue_job(name, *args)
            await job.result(timeout=RESULT_TIMEOUT_S, poll_delay=RESULT_POLL_S)
            samples.append(time.perf_counter() - start)
        return samples
