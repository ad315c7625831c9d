"""App for the rpc:// tests: a worker on RabbitMQ whose results go back as AMQP replies (or to
the backend named by RPCAPP_BACKEND).

Settings from the environment: RPCAPP_BROKER (the amqp:// URL), RPCAPP_BACKEND (default
``rpc://``).
"""

from __future__ import annotations

import asyncio
import os
import time

from celery import Celery

app = Celery("rpcapp", broker=os.environ.get("RPCAPP_BROKER", "amqp://"),
             backend=os.environ.get("RPCAPP_BACKEND", "rpc://"),
             task_track_started=True)


class Boom(Exception):
    """A user's exception, for the failure round trip."""


@app.task(name="rpc.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="rpc.aadd")
async def aadd(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@app.task(name="rpc.fail")
def fail(message: str) -> None:
    raise Boom(message)


@app.task(name="rpc.flaky", bind=True, max_retries=5)
def flaky(self, times: int) -> int:
    """Retries ``times`` times, then returns how many retries it took.

    The worker stores RETRY just after it sends the retry message (as upstream): the
    countdown keeps the next run's STARTED behind it, so the states' order is known."""
    if self.request.retries < times:
        raise self.retry(countdown=0.5)
    return self.request.retries


@app.task(name="rpc.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
