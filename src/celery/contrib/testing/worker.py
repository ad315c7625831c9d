"""A worker in a thread of the test process (Celery's ``start_worker``)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...app.base import Celery
from ...result import allow_join_result
from ...signals import Signal
from ...worker import Worker

__all__ = ["WORKER_LOGLEVEL", "start_worker", "test_worker_starting", "test_worker_stopped"]

#: The level the worker's loggers are set to (Celery reads the same variable).
WORKER_LOGLEVEL = os.environ.get("WORKER_LOGLEVEL", "error")

#: How long the worker may take to connect and start consuming (seconds).
START_TIMEOUT = 30.0

#: Sent before the worker starts (sender: the app) and after it stopped (sender: the app,
#: ``worker``: the worker or None if it did not start).
test_worker_starting = Signal("test_worker_starting")
test_worker_stopped = Signal("test_worker_stopped")


@contextmanager
def start_worker(app: Celery, concurrency: int = 1, pool: str = "solo",
                 loglevel: str | int = WORKER_LOGLEVEL, logfile: str | None = None,
                 perform_ping_check: bool = True, ping_task_timeout: float = 10.0,
                 shutdown_timeout: float = 10.0, **kwargs: Any) -> Iterator[Worker]:
    """Run a worker for ``app`` in a thread while the block runs; yields it.

    As Celery's: ``pool``/``concurrency`` size its sync threads (``"solo"``: one; the worker
    also has its loop worker for ``async def`` tasks); with ``perform_ping_check`` it first
    runs ``celery.ping`` (import ``celery.contrib.testing.tasks`` so the app has it) and
    waits up to ``ping_task_timeout`` for ``"pong"``; on exit it stops warm and waits up to
    ``shutdown_timeout`` for the thread. Other ``kwargs`` are ``app.Worker``'s.
    """
    test_worker_starting.send(sender=app)
    worker: Worker | None = None
    try:
        if perform_ping_check and "celery.ping" not in app.tasks:
            raise RuntimeError("start_worker(perform_ping_check=True) needs the celery.ping "
                               "task: import celery.contrib.testing.tasks first")
        with _worker_thread(app, shutdown_timeout, concurrency=concurrency, pool=pool,
                            loglevel=loglevel, logfile=logfile, **kwargs) as worker:
            if perform_ping_check:
                with allow_join_result():
                    answer = app.send_task("celery.ping").get(timeout=ping_task_timeout)
                if answer != "pong":
                    raise RuntimeError(f"celery.ping answered {answer!r}, not 'pong'")
            yield worker
    finally:
        test_worker_stopped.send(sender=app, worker=worker)


@contextmanager
def _worker_thread(app: Celery, shutdown_timeout: float, **kwargs: Any) -> Iterator[Worker]:
    ready = threading.Event()
    worker = app.Worker(ready_callback=ready.set, **kwargs)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            worker.start()
        except BaseException as exc:  # handed to the test's thread below
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name=f"test-worker-{worker.hostname}", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT):  # set when it consumes, or when it failed to start
        worker.stop()
        raise RuntimeError(f"the test worker did not start within {START_TIMEOUT} s")
    if failed:
        raise failed[0]
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(shutdown_timeout)
        if thread.is_alive():
            logging.getLogger(__name__).error(
                "The test worker %s did not stop within %.1f s", worker.hostname,
                shutdown_timeout)
            raise RuntimeError(f"the test worker did not stop within {shutdown_timeout} s")
    if failed:
        raise failed[0]
