"""A stand-in tracer for ThreadExecutor tests (test_thread_executor.py, test_pool_resize.py),
and ``run``: a fixture that starts executors and stops them after the test (tests/unit/
conftest.py makes it one)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace

from celery.worker.executor.threads import ThreadExecutor


class Recorder:
    """A tracer whose ``run_sync`` calls the request's ``body`` and records who ran it."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.alone: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.all_done = threading.Event()
        self.expected = 0

    def run_sync(self, req):
        req.body()
        return (req.id, threading.current_thread().name)

    def on_done(self, outcome, alone=False) -> None:
        with self._lock:
            self.done.append(outcome)
            self.alone[outcome[0]] = alone
            if len(self.done) >= self.expected:
                self.all_done.set()


def request(n: int, body=lambda: None) -> SimpleNamespace:
    return SimpleNamespace(id=f"r{n}", name="t", body=body)


def run() -> Iterator[Callable[[int, int], tuple[ThreadExecutor, Recorder]]]:
    made = []

    def start(count: int, expected: int) -> tuple[ThreadExecutor, Recorder]:
        rec = Recorder()
        rec.expected = expected
        ex = ThreadExecutor(rec, rec.on_done, count)  # type: ignore[arg-type]
        ex.start()
        made.append(ex)
        return ex, rec

    yield start
    for ex in made:
        ex.stop(5)
