"""dramatiq app and producer for bench/peers/harness.py.

Redis broker, or RabbitmqBroker (pika) when ``BENCH_BROKER_URL`` is an ``amqp://`` URL
(bench/rabbitmq.py); results through dramatiq's Results middleware with its Redis backend.
dramatiq actors here are plain functions run on the worker's threads, so the I/O task is
``time.sleep(0.01)``; concurrency is processes x threads (``--processes/--threads``).

The producer sends with ``actor.send()`` per task, then waits on each message in send order
with ``message.get_result(block=True)`` (a blocking pop on the result key, no polling).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis_call
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/11")
RESULT_TIMEOUT_MS = 60_000

BROKER_URL = os.environ.get("BENCH_BROKER_URL") or URL
if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=BROKER_URL)
else:
    broker = RedisBroker(url=BROKER_URL)
result_backend = RedisBackend(url=URL)
broker.add_middleware(Results(backend=result_backend))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", store_results=True, max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(actor_name="bench_sleep", store_results=True, max_retries=0)
def sleep() -> None:
    time.sleep(0.01)


@dramatiq.actor(actor_name="bench_call", store_results=True, max_retries=0)
def call() -> None:
    redis_call.incr()


ACTORS = {"noop": noop, "sleep": sleep, "call": call}


def version() -> str:
    return f"dramatiq {dramatiq.__version__}"


def worker_command(python: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    return [python, "-m", "dramatiq", "dramatiq_peer", *args], {}


class Producer:
    """Sends with ``send()`` and waits with ``get_result(block=True)``, sequentially."""

    def __init__(self, url: str) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def burst(self, kind: str, n: int) -> float:
        actor = ACTORS[kind]
        messages = [actor.send() for _ in range(n)]
        t_sent = time.perf_counter()
        for message in messages:
            message.get_result(backend=result_backend, block=True, timeout=RESULT_TIMEOUT_MS)
        return t_sent

    def round_trips(self, kind: str, n: int) -> list[float]:
        actor, samples = ACTORS[kind], []
        for _ in range(n):
            start = time.perf_counter()
            actor.send().get_result(backend=result_backend, block=True, timeout=RESULT_TIMEOUT_MS)
            samples.append(time.perf_counter() - start)
        return samples
