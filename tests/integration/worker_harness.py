"""Run a real Worker in a background thread against real Redis, or a command in a process
of its own with its output kept, for tests."""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import subprocess
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


class CommandProcess:
    """A command (``argv``) in a process of its own; its output (stdout and stderr) is read
    by a thread and kept in ``lines``."""

    def __init__(self, argv: list[str], *, cwd: Any = None, env: dict[str, str] | None = None
                 ) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def count(self, text: str) -> int:
        with self._changed:
            return sum(text in line for line in self.lines)

    def wait_for_line(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until ``text`` is in ``count`` lines of the output; fails with the output."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: sum(text in line for line in self.lines) >= count, timeout)
        assert ok, f"no {count} lines with {text!r} within {timeout} s:\n{self.output}"

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout} s:\n{self.output}") from None

    def stop(self) -> int:
        """SIGTERM (if still running) and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()
