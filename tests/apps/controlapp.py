"""App for the remote-control tests: tasks leave marks in CONTROLAPP_DIR so a test can see
whether (and how far) each ran in the worker process."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from celery import Celery, signals

URL = os.environ.get("CONTROLAPP_URL", "redis://127.0.0.1:6379/0")
DATA = Path(os.environ.get("CONTROLAPP_DIR", "."))
#: The result backend: the broker's URL unless CONTROLAPP_BACKEND names another (an AMQP
#: broker keeps results on Redis).
app = Celery("controlapp", broker=URL, backend=os.environ.get("CONTROLAPP_BACKEND") or URL)


def mark(text: str) -> None:
    with open(DATA / "marks.log", "a", encoding="utf-8") as marks:
        marks.write(text + "\n")


@app.task(name="ctl.sleep")
async def sleep(key: str, seconds: float) -> str:
    mark(f"start {key}")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        mark(f"cancelled {key}")
        raise
    mark(f"end {key}")
    return key


@app.task(name="ctl.spin", bind=True)
def spin(self, key: str, seconds: float) -> str:
    mark(f"start {key}")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            self.checkpoint()
            time.sleep(0.01)
    except Exception as exc:
        mark(f"stopped {key} {type(exc).__name__}")
        raise
    mark(f"end {key}")
    return key


@app.task(name="ctl.tick")
def tick(key: str) -> float:
    mark(f"tick {key} {time.time():.3f}")
    return time.time()


@signals.task_revoked.connect
def on_revoked(request=None, terminated=None, signum=None, expired=None, **_):
    mark(f"revoked {request.id} terminated={terminated} signum={signum} expired={expired}")
