"""App for the fault suite (tests/faults/): tasks that log each execution's start and end to
a file, so that a test counts how many times each task id ran, across worker processes
killed or stopped at any point.

Settings come from the environment: FAULTAPP_BROKER, FAULTAPP_BACKEND (optional),
FAULTAPP_LOG (the executions log), FAULTAPP_ACKS_LATE ("1"), FAULTAPP_OPTIONS (JSON
broker_transport_options).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from celery import Celery, signals

app = Celery("faultapp", broker=os.environ["FAULTAPP_BROKER"],
             backend=os.environ.get("FAULTAPP_BACKEND") or None,
             task_acks_late=os.environ.get("FAULTAPP_ACKS_LATE") == "1",
             broker_transport_options=json.loads(os.environ.get("FAULTAPP_OPTIONS") or "{}"))
# O_APPEND: each line is written whole, whatever other processes append meanwhile.
_LOG = os.open(os.environ["FAULTAPP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(event: str, request) -> None:
    """``<event> <task id> <redelivered 0/1> <pid>``, one line (event: start, end, reported)."""
    redelivered = int(bool((request.delivery_info or {}).get("redelivered")))
    os.write(_LOG, f"{event} {request.id} {redelivered} {os.getpid()}\n".encode())


@signals.task_postrun.connect
def reported(task=None, **_) -> None:
    """The worker reports the task's end (a result stored, its message settled): never for
    a def task a cold shutdown abandoned and requeued, whose function returned afterwards."""
    if task is not None and task.name.startswith("fault."):
        record("reported", task.request)


@app.task(name="fault.sync", bind=True)
def sync_work(self, seconds: float) -> float:
    record("start", self.request)
    if seconds:
        time.sleep(seconds)
    record("end", self.request)
    return seconds


@app.task(name="fault.async", bind=True)
async def async_work(self, seconds: float) -> float:
    record("start", self.request)
    if seconds:
        await asyncio.sleep(seconds)
    record("end", self.request)
    return seconds
