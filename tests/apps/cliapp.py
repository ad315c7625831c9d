"""A tiny app for CLI tests; broker and backend come from CLIAPP_BROKER / CLIAPP_BACKEND."""

from __future__ import annotations

import os
import sys

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


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


@app.task
def gil_enabled() -> bool:
    """Whether the GIL is on, seen from a sync worker thread."""
    return _gil_enabled()


@app.task
async def agil_enabled() -> bool:
    """Whether the GIL is on, seen from a loop worker thread."""
    return _gil_enabled()
