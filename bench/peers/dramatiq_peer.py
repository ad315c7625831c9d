"""dramatiq app and producer for bench/peers/harness.py.

Redis broker, or RabbitmqBroker (pika) when ``BENCH_BROKER_URL`` is an ``amqp://`` URL
(bench/rabbitmq.py); results through dramatiq's Results middleware with its Redis backend.
Concurrency is processes x threads (``--processes/--threads``).

Actors are plain functions run on the worker's threads (the I/O task is ``time.sleep(0.01)``),
unless ``BENCH_DRAMATIQ_ASYNC=1``: then the AsyncIO middleware runs the I/O, one-Redis-call
and mix actors as ``async def`` on its event loop thread (uvloop's loop where uvloop is
installed), the way dramatiq 2 advises for I/O-bound actors. Workload kinds:

* noop, sleep (10 ms), call (one INCR: redis_call.py), mix (0.2 ms of CPU work, then one INCR);
* kb1, kb100: one string argument of 1 KB or 100 KB;
* options: the no-op actor on its own queue (``bench.routed``, actor priority 5), sent with
  ``send_with_options(delay=0)``: through the delay queue, as an ETA.

The producer sends with ``actor.send()`` per task, then waits on each message in send order
with ``message.get_result(block=True)`` (a blocking pop on the result key, no polling).
"""

from __future__ import annotations

import asyncio
import os
import time

import dramatiq
import redis_call
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/11")
RESULT_TIMEOUT_MS = 60_000
ASYNC = os.environ.get("BENCH_DRAMATIQ_ASYNC") == "1"
KINDS = frozenset({"noop", "sleep", "call", "kb1", "kb100", "options", "mix"})

if ASYNC:
    try:  # the AsyncIO middleware's loop comes from asyncio.new_event_loop(): uvloop's then
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

BROKER_URL = os.environ.get("BENCH_BROKER_URL") or URL
if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=BROKER_URL)
else:
    broker = RedisBroker(url=BROKER_URL)
result_backend = RedisBackend(url=URL)
broker.add_middleware(Results(backend=result_backend))
if ASYNC:
    from dramatiq.middleware.asyncio import AsyncIO

    broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)
OPTIONS = {"store_results": True, "max_retries": 0}


@dramatiq.actor(actor_name="bench_noop", **OPTIONS)
def noop() -> None:
    return None


@dramatiq.actor(actor_name="bench_payload", **OPTIONS)
def payload(data: str) -> None:
    return None


@dramatiq.actor(actor_name="bench_routed", queue_name="bench.routed", priority=5, **OPTIONS)
def routed() -> None:
    return None


if ASYNC:

    @dramatiq.actor(actor_name="bench_sleep", **OPTIONS)
    async def sleep() -> None:
        await asyncio.sleep(0.01)

    @dramatiq.actor(actor_name="bench_call", **OPTIONS)
    async def call() -> None:
        await redis_call.aincr()

    @dramatiq.actor(actor_name="bench_mix", **OPTIONS)
    async def mix() -> None:
        redis_call.burn()
        await redis_call.aincr()

else:

    @dramatiq.actor(actor_name="bench_sleep", **OPTIONS)
    def sleep() -> None:
        time.sleep(0.01)

    @dramatiq.actor(actor_name="bench_call", **OPTIONS)
    def call() -> None:
        redis_call.incr()

    @dramatiq.actor(actor_name="bench_mix", **OPTIONS)
    def mix() -> None:
        redis_call.burn()
        redis_call.incr()


ACTORS = {"noop": noop, "sleep": sleep, "call": call, "mix": mix, "kb1": payload,
          "kb100": payload, "options": routed}


def version() -> str:
    return f"dramatiq {dramatiq.__version__}"


def worker_command(python: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    return [python, "-m", "dramatiq", "dramatiq_peer", *args], {}


def send(kind: str):
    actor = ACTORS[kind]
    if kind in redis_call.PAYLOADS:
        return actor.send(redis_call.PAYLOADS[kind])
    if kind == "options":
        return actor.send_with_options(delay=0)
    return actor.send()


class Producer:
    """Sends with ``send()`` and waits with ``get_result(block=True)``, sequentially."""

    def __init__(self, url: str) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def burst(self, kind: str, n: int) -> float:
        messages = [send(kind) for _ in range(n)]
        t_sent = time.perf_counter()
        for message in messages:
            message.get_result(backend=result_backend, block=True, timeout=RESULT_TIMEOUT_MS)
        return t_sent

    def round_trips(self, kind: str, n: int) -> list[float]:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            send(kind).get_result(backend=result_backend, block=True, timeout=RESULT_TIMEOUT_MS)
            samples.append(time.perf_counter() - start)
        return samples
