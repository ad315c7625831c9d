"""A tiny app for the ``celery bench`` tests: broker and results from BENCHAPP_BROKER /
BENCHAPP_BACKEND, else the default SQLite broker and a SQLite result file, both in the
working directory. It defines no task: ``celery bench`` brings its own."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "benchapp_cli",
    broker=os.environ.get("BENCHAPP_BROKER") or None,
    backend=os.environ.get("BENCHAPP_BACKEND") or "db+sqlite:///bench-results.db",
)
