"""App for shutdown tests: tasks that run long enough to be caught by a signal."""

from __future__ import annotations

import asyncio
import os
import time

from celery import Celery

URL = os.environ.get("SIGNALAPP_URL", "redis://127.0.0.1:6379/10")
app = Celery("signalapp", broker=URL, backend=URL)


@app.task(name="sig.slow_async")
async def slow_async(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@app.task(name="sig.slow_sync")
def slow_sync(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
