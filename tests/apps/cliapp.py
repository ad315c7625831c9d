"""A tiny app for CLI tests; broker and backend come from CLIAPP_BROKER / CLIAPP_BACKEND."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "cliapp",
    broker=os.environ.get("CLIAPP_BROKER", "redis://127.0.0.1:6379/6"),
    backend=os.environ.get("CLIAPP_BACKEND", "redis://127.0.0.1:6379/6"),
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
async def echo(value: object) -> object:
    return value
