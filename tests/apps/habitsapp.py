"""An app for the CLI-habit tests (pidfile, detach, multi, purge, -X, time limits): SQLite
broker and results in the folder HABITS_DIR, two queues."""

from __future__ import annotations

import os
import time

from celery import Celery

folder = os.environ["HABITS_DIR"]
app = Celery("habitsapp", broker=f"sqlite:///{folder}/broker.db",
             backend=f"db+sqlite:///{folder}/results.db")
app.conf.task_queues = {"celery": {}, "other": {}}


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"
