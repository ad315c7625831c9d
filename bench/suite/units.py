"""The suite's catalogue: every unit (one child process per round) and the run profiles.

A unit runs in the Python of the tree it measures and yields one or more pyperf benchmarks,
all in seconds (lower is better):

* ``micro`` and ``enqueue``: the tables of micro.py and enqueue.py, timed in the child
  (timing.py); several values per child run;
* ``e2e.*``: one ``celery -A suiteapp bench --json`` run each (src/celery/bin/bench.py: it
  starts a real worker process, awaits every result, reads the worker's CPU time from
  /proc/<pid>/stat, then stops the worker, purges its queue and deletes its results); one
  value per metric per run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

import enqueue
import micro
from common import (
    QUEUE_MARK,
    SUITE,
    ChildFailed,
    Measured,
    Tree,
    child_env,
    delete_suite_keys,
    run_json,
)
from timing import matches


@dataclass(frozen=True)
class Profile:
    """How long a run is: rounds (one child run of each unit per round and tree) and sizes."""

    name: str
    rounds: int
    #: Values per child run of a table, warm-up values, and the least seconds per value.
    values: int
    warmups: int
    min_time: float
    #: Tasks of each throughput run; round trips of each latency run.
    tasks: int
    latency_samples: int


PROFILES = {
    "full": Profile("full", rounds=5, values=5, warmups=1, min_time=0.05, tasks=5000,
                    latency_samples=500),
    "fast": Profile("fast", rounds=2, values=3, warmups=1, min_time=0.02, tasks=1000,
                    latency_samples=100),
    "gate": Profile("gate", rounds=6, values=4, warmups=1, min_time=0.02, tasks=2000,
                    latency_samples=150),
}


@dataclass(frozen=True)
class Unit:
    name: str
    #: The benchmarks it reports, for --only.
    benchmarks: tuple[str, ...]
    needs_redis: bool

    def run(self, tree: Tree, profile: Profile, only: list[str], url: str) -> Measured:
        raise NotImplementedError


@dataclass(frozen=True)
class TableUnit(Unit):
    """A table of timing.py benchmarks in a script of this folder."""

    script: str = ""

    def run(self, tree: Tree, profile: Profile, only: list[str], url: str) -> Measured:
        wanted = [n for n in self.benchmarks if matches(n, only)]
        argv = [str(tree.python), str(SUITE / self.script), "child", "--only", ",".join(wanted),
                "--values", str(profile.values), "--warmups", str(profile.warmups),
                "--min-time", str(profile.min_time)]
        try:
            out = run_json(argv, child_env(url), timeout=120)
        finally:
            if self.needs_redis:
                delete_suite_keys(url)
        return Measured(out["results"], out["skipped"], out["celery"])


#: ``celery bench`` JSON field -> how a metric is made from it (seconds).
METRICS: dict[str, tuple[str, Callable[[float], float]]] = {
    "time_per_task": ("throughput_per_s", lambda per_s: 1 / per_s),
    "worker_cpu_per_task": ("cpu_per_task_us", lambda us: us / 1e6),
    "latency_p50": ("latency_p50_ms", lambda ms: ms / 1000),
    "latency_p99": ("latency_p99_ms", lambda ms: ms / 1000),
}
_queues = count()


@dataclass(frozen=True)
class CeleryBenchUnit(Unit):
    """One ``celery bench`` configuration; ``latency``: sequential round trips."""

    options: tuple[str, ...] = ()
    latency: bool = False
    #: Attempts per run: the Redis server is shared, a dropped connection fails one run.
    attempts: int = 2

    def argv(self, tree: Tree, profile: Profile) -> list[str]:
        queue = f"{QUEUE_MARK}-{os.getpid()}-{next(_queues)}"
        size = ["--tasks", str(profile.latency_samples), "--in-flight", "1"] if self.latency \
            else ["--tasks", str(profile.tasks)]
        return [str(tree.python), "-m", "celery", "-A", "suiteapp", "bench", "--json",
                "--queue", queue, "--timeout", "30", *size, *self.options]

    def run(self, tree: Tree, profile: Profile, only: list[str], url: str) -> Measured:
        error: ChildFailed | None = None
        for _ in range(self.attempts):
            try:
                report = run_json(self.argv(tree, profile), child_env(url), timeout=120)
                return Measured(self.metrics(report), {}, "")
            except ChildFailed as exc:
                error = exc
            finally:
                delete_suite_keys(url)
        return Measured({}, dict.fromkeys(self.benchmarks, str(error)), "")

    def metrics(self, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.benchmarks:
            field, convert = METRICS[name.rsplit(".", 1)[1]]
            value = report.get(field)
            if value:  # None: not measured here; 0 CPU ticks: too short to tell
                out[name] = {"values": [convert(value)], "loops": 1}
        return out


def _e2e(name: str, metrics: tuple[str, ...], *options: str, latency: bool = False) -> Unit:
    return CeleryBenchUnit(f"e2e.{name}", tuple(f"e2e.{name}.{m}" for m in metrics),
                           needs_redis=True, options=options, latency=latency)


THROUGHPUT = ("time_per_task", "worker_cpu_per_task")
MIXED = ("--mix", "0.5", "--io-ms", "10", "--cpu-ms", "1")

UNITS: list[Unit] = [
    TableUnit("micro", tuple(micro.BENCHMARKS), needs_redis=False, script="micro.py"),
    TableUnit("enqueue", tuple(enqueue.BENCHMARKS), needs_redis=True, script="enqueue.py"),
    # No-op tasks, results stored and awaited, up to 1000 in flight.
    _e2e("noop_sync", THROUGHPUT, "--mix", "0", "--loop-workers", "1", "--sync-workers", "4"),
    _e2e("noop_async", THROUGHPUT, "--mix", "1", "--loop-workers", "1", "--sync-workers", "1"),
    # One task at a time: send, wait for its result, again.
    _e2e("latency", ("latency_p50", "latency_p99"), "--mix", "0", "--loop-workers", "1",
         "--sync-workers", "2", latency=True),
    # Half async tasks awaiting 10 ms, half sync tasks burning 1 ms of CPU.
    _e2e("mixed_l1s2", THROUGHPUT, *MIXED, "--loop-workers", "1", "--sync-workers", "2"),
    _e2e("mixed_l2s4", THROUGHPUT, *MIXED, "--loop-workers", "2", "--sync-workers", "4"),
]


def select(only: list[str]) -> list[Unit]:
    """The units with at least one benchmark ``--only`` selects."""
    return [u for u in UNITS if any(matches(n, only) for n in u.benchmarks)]
