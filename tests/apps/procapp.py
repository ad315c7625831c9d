"""App for the ``--processes`` tests: tasks report the worker process that ran them and log
their starts and ends, so a test sees which processes consumed and that nothing was lost.

Settings from the environment: PROCAPP_BROKER (the broker and result backend URL: a Redis
URL, or a folder for SQLite files), PROCAPP_DIR (where the executions log goes),
PROCAPP_RETRY ("0": a worker that cannot reach the broker at start exits).
"""

from __future__ import annotations

import os
import time

from celery import Celery

DATA = os.environ.get("PROCAPP_DIR", ".")
_url = os.environ.get("PROCAPP_BROKER", "sqlite")
if _url == "sqlite":
    broker, backend = f"sqlite:///{DATA}/broker.db", f"db+sqlite:///{DATA}/results.db"
else:
    broker = backend = _url
app = Celery("procapp", broker=broker, backend=backend,
             broker_connection_retry_on_startup=os.environ.get("PROCAPP_RETRY") != "0")
# O_APPEND: each line is written whole, whatever the other processes append meanwhile.
_LOG = os.open(os.path.join(DATA, "runs.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(event: str, n: int) -> None:
    os.write(_LOG, f"{event} {n} {os.getpid()}\n".encode())


@app.task(name="proc.whoami")
def whoami(n: int) -> list[int]:
    record("end", n)
    return [n, os.getpid()]


@app.task(name="proc.slow")
def slow(n: int, seconds: float) -> list[int]:
    record("start", n)
    time.sleep(seconds)
    record("end", n)
    return [n, os.getpid()]

