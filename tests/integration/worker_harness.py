"""Run a real Worker in a background thread against real Redis, for tests."""

from __future__ import annotations

import asyncio
import faulthandler
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.worker import Worker


@contextmanager
def running_worker(app: Celery, **options: Any) -> Iterator[Worker]:
    """Start a worker thread, wait until it consumes, and stop it (warm) on exit."""
    ready = threading.Event()
    worker = Worker(app, ready_callback=ready.set, **options)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("worker did not become ready within 15 s")
    if errors:
        raise errors[0]
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)
        if thread.is_alive():
            _dump(worker)
            raise RuntimeError("worker did not stop within 20 s")
    if errors:
        raise errors[0]


def _dump(worker: Worker) -> None:
    """Print every thread's stack and the worker loop's pending tasks (for a hung stop)."""
    faulthandler.dump_traceback(sys.stderr)
    loop = worker._loop
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)
