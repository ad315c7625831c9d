"""What run.py and gate.py share: the trees under test, running child processes safely,
turning their measurements into pyperf benchmarks, and cleaning up the Redis database.

Everything here runs in the suite's own Python (the project's .venv, with pyperf); the
children run in the Python of the tree they measure, which may be a throwaway venv.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyperf

SUITE = Path(__file__).resolve().parent
BENCH = SUITE.parent
ROOT = BENCH.parent
#: The suite's Redis database: broker and results of every end-to-end benchmark.
DEFAULT_URL = "redis://127.0.0.1:6379/9"
#: Every queue the suite makes has this in its name, so leftovers can be found and deleted.
QUEUE_MARK = "perf-suite"
#: Seconds a child gets to clean up after SIGTERM before its whole tree is killed.
STOP_GRACE = 20.0
#: Settings of the caller that would point a child at another broker, backend or app.
_FOREIGN_ENV = ("PYTHONPATH", "BROKER_URL", "RESULT_BACKEND", "CELERY_BROKER_URL",
                "CELERY_RESULT_BACKEND", "CONFIG_MODULE", "APP")


class ChildFailed(Exception):
    """A benchmark child exited non-zero, timed out or printed no JSON."""


@dataclass(frozen=True)
class Tree:
    """One tree under test: a label (``base``, ``current``) and the Python that imports it."""

    label: str
    python: Path


@dataclass
class Measured:
    """What one child run of one unit measured: benchmark name -> values (seconds per
    operation) with the loop count and warm-up values, and the benchmarks it skipped."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    #: Where the child's ``celery`` came from (which tree it really measured).
    celery: str = ""


def child_env(url: str) -> dict[str, str]:
    """The environment of every child: suiteapp importable, broker and results at ``url``."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(PYTHONPATH=f"{SUITE}{os.pathsep}{BENCH}", BENCH_URL=url, C_FORCE_ROOT="1",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def _started(pid: int) -> str | None:
    """When ``pid`` started (field 22 of /proc/<pid>/stat), to tell it from a later process
    that got the same pid; None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> dict[int, str | None]:
    """Every process below ``pid`` (Linux /proc), with when each started."""
    found: dict[int, str | None] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.update((kid, _started(kid)) for kid in kids)
            todo.extend(kids)
    return found


def stop_tree(proc: subprocess.Popen[str]) -> None:
    """SIGTERM ``proc`` (``celery bench`` then stops its worker, purges its queue and deletes
    its results); after STOP_GRACE seconds SIGKILL it and every process that was below it,
    including a worker started in a session of its own and orphaned since."""
    below = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
    below.update(_descendants(proc.pid))
    killed = []
    for pid, started in below.items():
        if started is not None and _started(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    proc.wait()
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously: see them go
    while any(_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a zombie has exited; its parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_json(argv: Sequence[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a child to the end and return the JSON object on the last line of its output.

    Raises:
        ChildFailed: it exited non-zero, took longer than ``timeout`` seconds (it and its
            children are stopped first), or its last line is not JSON.
    """
    proc = subprocess.Popen(list(argv), env=env, cwd=SUITE, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:  # a timeout, Ctrl-C: nothing of the child may stay behind
        stop_tree(proc)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise ChildFailed(f"no answer within {timeout:g} s: {' '.join(argv[:6])}") from None
        raise
    if proc.returncode != 0:
        tail = (err.strip() or out.strip())[-800:]
        raise ChildFailed(f"exit {proc.returncode}: {tail}")
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ChildFailed(f"no JSON in the output: {out[-300:]!r} {err[-300:]!r}") from None


# -- Redis ------------------------------------------------------------------------------------


def _client(url: str) -> Any:
    # celery first: on a free-threaded build it keeps the Redis client's C parsers from
    # loading (they would turn the GIL on in this process too).
    import celery  # noqa: F401, I001
    import valkey

    parts = urlsplit(url)
    return valkey.Valkey(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                         db=int(parts.path.strip("/") or 0), password=parts.password,
                         socket_timeout=5)


def redis_up(url: str) -> bool:
    try:
        client = _client(url)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def delete_suite_keys(url: str) -> int:
    """Delete every key of the suite's queues (messages, kombu bindings); returns how many.
    Result keys are deleted by ``celery bench`` itself, and expire anyway (suiteapp). Best
    effort: with Redis gone it says so and returns 0 (the keys' names let a later run find
    them)."""
    try:
        client = _client(url)
        try:
            keys = list(client.scan_iter(match=f"*{QUEUE_MARK}*", count=1000))
            return int(client.delete(*keys)) if keys else 0
        finally:
            client.close()
    except Exception as exc:
        print(f"could not delete the suite's keys at {url}: {exc}", file=sys.stderr)
        return 0


# -- pyperf -----------------------------------------------------------------------------------

#: Metadata that changes from run to run: kept out of the shared machine description.
_VOLATILE = ("date", "load_avg_1min", "runnable_threads", "uptime", "mem_max_rss",
             "python_executable")


class Collector:
    """pyperf benchmarks for one tree, built run by run (one Run per child run and unit)."""

    _machine: dict[str, Any] | None = None

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.benchmarks: dict[str, pyperf.Benchmark] = {}
        #: Benchmark -> why a run of it failed or was skipped (the last reason).
        self.skipped: dict[str, str] = {}
        #: Benchmark -> how many of its runs failed.
        self.failures: dict[str, int] = {}
        self.celery = ""

    @classmethod
    def machine(cls) -> dict[str, Any]:
        """pyperf's description of this machine and Python, collected once (it is slow)."""
        if cls._machine is None:
            meta = pyperf.Run([1.0]).get_metadata()
            cls._machine = {k: v for k, v in meta.items() if k not in _VOLATILE}
        return cls._machine

    def add(self, measured: Measured, extra: dict[str, Any] | None = None) -> None:
        """One pyperf run per benchmark ``measured`` has; ``extra`` metadata is added to each run's
        (and wins over the machine's: e.g. the child's own ``python_version``)."""
        self.celery = measured.celery or self.celery
        for name, reason in measured.skipped.items():
            self.skipped[name] = reason
            self.failures[name] = self.failures.get(name, 0) + 1
        for name, data in measured.results.items():
            loops = int(data.get("loops", 1))
            metadata = {**self.machine(), "name": name, "unit": "second", "loops": loops,
                        "python_executable": str(self.tree.python), "tree": self.tree.label,
                        "date": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}
            run = pyperf.Run(data["values"], warmups=[(loops, w) for w in data.get("warmups", ())],
                             metadata=metadata, collect_metadata=False)
            if name in self.benchmarks:
                self.benchmarks[name].add_run(run)
            else:
                self.benchmarks[name] = pyperf.Benchmark([run])

    def suite(self, prefix: str = "") -> pyperf.BenchmarkSuite | None:
        """The benchmarks whose name starts with ``prefix`` (None when there are none)."""
        chosen = [b for n, b in sorted(self.benchmarks.items()) if n.startswith(prefix)]
        return pyperf.BenchmarkSuite(chosen) if chosen else None

    def dump(self, path: Path, prefix: str = "") -> bool:
        suite = self.suite(prefix)
        if suite is None:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        suite.dump(str(path), replace=True)
        return True
