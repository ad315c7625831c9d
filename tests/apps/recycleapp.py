"""App for the recycling tests: tasks report the worker process that ran them."""

from __future__ import annotations

import os

from celery import Celery

DATA = os.environ.get("RECYCLEAPP_DIR", ".")
app = Celery("recycleapp", broker=f"sqlite:///{DATA}/broker.db",
             backend=f"db+sqlite:///{DATA}/results.db")


@app.task(name="recycle.whoami")
def whoami(n: int) -> list[int]:
    # One line per execution, so a task run twice shows up twice.
    with open(os.path.join(DATA, "runs.log"), "a", encoding="utf-8") as runs:
        runs.write(f"{n}\n")
    return [n, os.getpid()]


@app.task(name="recycle.grow")
async def grow(n: int) -> list[int]:
    _ballast.append(b"\x01" * (8 * 1024 * 1024))  # 8 MiB more each time, really resident
    return [n, os.getpid()]


_ballast: list[bytes] = []
