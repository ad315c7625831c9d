"""Worker processes of the fault suite (tests/apps/faultapp.py) and the log of executions
their tasks write: start one, wait until it consumes, signal or kill it, and count how many
times each task id started and ended."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Executions:
    """What the tasks logged (``faultapp.record``): starts and ends per task id."""

    starts: collections.Counter[str] = field(default_factory=collections.Counter)
    ends: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Ends the worker reported (``task_postrun``): an abandoned def task's is not.
    reported: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Executions started from a redelivered message (restored or requeued), per task id.
    redelivered: collections.Counter[str] = field(default_factory=collections.Counter)

    @classmethod
    def read(cls, path: Path) -> Executions:
        out = cls()
        if not path.exists():
            return out
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:  # a line cut by kill -9 (never seen: os.write is whole)
                continue
            event, task_id, redelivered, _pid = parts
            {"start": out.starts, "end": out.ends, "reported": out.reported}[event][task_id] += 1
            if redelivered == "1" and event == "start":
                out.redelivered[task_id] += 1
        return out

    def lost(self, ids: list[str]) -> list[str]:
        """Sent but never ended."""
        return [i for i in ids if not self.ends[i]]

    def duplicated(self, ids: list[str]) -> list[str]:
        """Ended more than once."""
        return [i for i in ids if self.ends[i] > 1]

    def unaccounted(self, ids: list[str]) -> list[str]:
        """Ended more than once, and not every extra run came from a redelivered message
        (one the broker gave back after its ack was cut off, or requeued)."""
        return [i for i in ids if self.ends[i] - 1 > self.redelivered[i]]

    def reported_twice(self, ids: list[str]) -> list[str]:
        """Whose end the workers reported more than once."""
        return [i for i in ids if self.reported[i] > 1]


class Worker:
    """``celery -A faultapp worker`` (or another app of tests/apps) in a process of its own;
    its output is kept. Run by this interpreter, or by ``$FAULT_WORKER_PYTHON`` (another
    install, to compare with)."""

    def __init__(self, env: dict[str, str], *options: str, cwd: Path = ROOT,
                 app: str = "faultapp") -> None:
        full_env = dict(os.environ, **env)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "tests" / "apps"), str(ROOT), full_env.get("PYTHONPATH", "")])
        python = os.environ.get("FAULT_WORKER_PYTHON") or sys.executable
        self.proc = subprocess.Popen(
            [python, "-m", "celery", "-A", app, "worker", "-l", "info", *options],
            cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if " ready: consuming" in line:
                self._ready.set()
        self._ready.set()  # it exited

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 30) -> Worker:
        assert self._ready.wait(timeout) and self.proc.poll() is None, self.output
        return self

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """kill -9, and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        """Its exit status; fails with its output if it is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout} s:\n{self.output}") \
                from None

    def wait_stopped(self, timeout: float) -> None:
        """Wait for a shutdown asked for by signal; fails unless it ended cleanly (status 0,
        or killed by a signal that came once the shutdown was done)."""
        status = self.wait(timeout)
        done = "shut down after" in self.output
        assert status == 0 or (status < 0 and done), f"exit status {status}:\n{self.output}"

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), which must end cleanly; kill -9 if it does not end."""
        self.signal(signal.SIGTERM)
        try:
            self.wait_stopped(timeout)
        except AssertionError:
            if self.proc.poll() is None:
                self.kill()
            raise


def faultapp_env(broker: str, backend: str | None, log: Path, acks_late: bool = False,
                 **options: object) -> dict[str, str]:
    """The environment faultapp reads its settings from."""
    return {"FAULTAPP_BROKER": broker, "FAULTAPP_BACKEND": backend or "",
            "FAULTAPP_LOG": str(log), "FAULTAPP_ACKS_LATE": "1" if acks_late else "0",
            "FAULTAPP_OPTIONS": json.dumps(options)}


def wait_until(predicate, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(step)
