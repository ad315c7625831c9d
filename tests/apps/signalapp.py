"""App for shutdown tests: tasks that run long enough to be caught by a signal. Each task
says it started (RPUSH of its id to ``sig:started``), so a test waits on that rather than on
a guess of how long a start takes; the held tasks run until ``sig:release`` is set."""

from __future__ import annotations

import asyncio
import os
import time

import valkey

from celery import Celery

URL = os.environ.get("SIGNALAPP_URL", "redis://127.0.0.1:6379/10")
app = Celery("signalapp", broker=URL, backend=URL)
#: The list each task pushes its id to when it starts; the key that releases held tasks.
STARTED, RELEASE = "sig:started", "sig:release"


def _started(task_id: str) -> None:
    with valkey.Valkey.from_url(URL) as client:
        client.rpush(STARTED, task_id)


@app.task(name="sig.slow_async", bind=True)
async def slow_async(self, seconds: float) -> float:
    _started(self.request.id)
    await asyncio.sleep(seconds)
    return seconds


@app.task(name="sig.slow_sync", bind=True)
def slow_sync(self, seconds: float) -> float:
    _started(self.request.id)
    time.sleep(seconds)
    return seconds


def _released(client: valkey.Valkey, deadline: float) -> bool:
    if time.monotonic() > deadline:
        raise TimeoutError("never released")
    return bool(client.exists(RELEASE))


@app.task(name="sig.held_async", bind=True)
async def held_async(self) -> str:
    """Runs until the test sets ``sig:release`` (30 s at most)."""
    _started(self.request.id)
    with valkey.Valkey.from_url(URL) as client:
        deadline = time.monotonic() + 30
        while not _released(client, deadline):
            await asyncio.sleep(0.02)
    return "released"


@app.task(name="sig.held_sync", bind=True)
def held_sync(self) -> str:
    """Runs until the test sets ``sig:release`` (30 s at most)."""
    _started(self.request.id)
    with valkey.Valkey.from_url(URL) as client:
        deadline = time.monotonic() + 30
        while not _released(client, deadline):
            time.sleep(0.02)
    return "released"
