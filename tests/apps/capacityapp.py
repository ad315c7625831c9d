"""A tiny app for the ``celery capacity`` tests: broker and results from CAPACITYAPP_BROKER /
CAPACITYAPP_BACKEND, else the default SQLite broker and a SQLite result file in the working
directory. ``resize`` stands for a user's own I/O-bound task; ``strict`` fails on a bad
argument, as a user's task fed a wrong sample would."""

from __future__ import annotations

import asyncio
import os

from celery import Celery

app = Celery(
    "capacityapp",
    broker=os.environ.get("CAPACITYAPP_BROKER") or None,
    backend=os.environ.get("CAPACITYAPP_BACKEND") or "db+sqlite:///capacity-results.db",
)


@app.task
async def resize(width: int, height: int = 10) -> int:
    """Waits as a call to an image service would: 20 ms."""
    await asyncio.sleep(0.02)
    return width * height


@app.task
def strict(count: int) -> int:
    """Refuses anything but a whole number."""
    if not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    return count
