"""The Celery side of the FastAPI example: the app and its tasks (the worker runs this).

Run a worker:  celery -A examples.fastapi.tasks worker -l INFO
The broker and result store come from CELERY_BROKER_URL / CELERY_RESULT_BACKEND, as in Celery;
without them, Redis on localhost.
"""

from __future__ import annotations

import asyncio

from celery import Celery

app = Celery(
    "fastapi_example",
    broker="redis://localhost:6379/0",
    backend="redis://localhost:6379/0",
)


@app.task
def add(x: int, y: int) -> int:
    """A ``def`` task: runs on one of the worker's threads."""
    return x + y


@app.task
async def slow_echo(value: str, seconds: float) -> str:
    """An ``async def`` task that takes a while: awaiting it must not hold up the web app."""
    await asyncio.sleep(seconds)
    return value


@app.task
def fail(message: str) -> None:
    raise ValueError(message)
