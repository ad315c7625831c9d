"""App for the Flower tests: a task that succeeds, one that fails and one that waits.

Its broker and result backend come from FLOWERAPP_URL (the tests use Redis database 7).
"""

from __future__ import annotations

import asyncio
import os

from celery import Celery

URL = os.environ.get("FLOWERAPP_URL", "redis://127.0.0.1:6379/7")
app = Celery("flowerapp", broker=URL, backend=URL)


@app.task(name="flowerapp.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="flowerapp.fail")
def fail(reason: str) -> None:
    raise ValueError(f"failed on purpose: {reason}")


@app.task(name="flowerapp.wait")
async def wait(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
