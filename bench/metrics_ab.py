"""What the worker's Prometheus metrics (``--metrics-port``) cost per task.

Two measurements, side by side in one run:

1. ``hooks``: the metrics' work for one task (received, started, finished) as the
   consumer's loop does it, timed in a tight loop: the CPU a task costs more with metrics.
2. ``bench``: ``celery bench --no-results`` on Redis with and without
   ``--worker-arg=--metrics-port=0``, alternating (ABBA) so that drift hits both; worker
   CPU per task and throughput of each run.

    .venv/bin/python bench/metrics_ab.py [--rounds 4] [--tasks 20000] [--url redis://...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any


def hooks(n: int = 200_000) -> dict[str, float]:
    """µs per task of the metrics hooks (received + started + outcome), best of 5."""
    from celery import states
    from celery.worker.metrics import WorkerMetrics
    from celery.worker.request import Outcome, Request

    metrics = WorkerMetrics("bench@host")
    delivery = SimpleNamespace(message=SimpleNamespace(headers={"eta": None}))
    names = [f"tasks.t{i}" for i in range(4)]
    reqs = [Request(delivery, SimpleNamespace(), name, "id", False, False)  # type: ignore[arg-type]
            for name in names]
    for req in reqs:
        req.started_at = time.time()
    outs = [Outcome(req, states.SUCCESS, None, 0.001) for req in reqs]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for i in range(n):
            req = reqs[i & 3]
            metrics.received(req)
            metrics.task("task-started", req)
            metrics.outcome(outs[i & 3])
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return {"hooks_us_per_task": round(best, 2)}


def bench_run(url: str, tasks: int, metrics: bool) -> dict[str, Any]:
    env = dict(os.environ, BENCHAPP_BROKER=url, BENCHAPP_BACKEND=url)
    argv = [sys.executable, "-m", "celery", "-A", "tests.apps.benchapp_cli", "bench",
            "--tasks", str(tasks), "--no-results", "--json"]
    if metrics:
        argv.append("--worker-arg=--metrics-port=0")
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--no-bench", action="store_true")
    args = parser.parse_args()
    print(json.dumps(hooks()))
    if args.no_bench:
        return
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for r in range(args.rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            result = bench_run(args.url, args.tasks, on)
            runs[on].append(result)
            print(json.dumps({"metrics": on, "cpu_per_task_us": result["cpu_per_task_us"],
                              "throughput_per_s": result["throughput_per_s"]}), flush=True)
    for on, label in ((False, "off"), (True, "on")):
        cpu = [x["cpu_per_task_us"] for x in runs[on]]
        tput = [x["throughput_per_s"] for x in runs[on]]
        print(f"metrics {label}: worker CPU/task median {statistics.median(cpu):.1f} µs "
              f"(min {min(cpu):.1f}, max {max(cpu):.1f}); throughput median "
              f"{statistics.median(tput):.0f}/s (min {min(tput):.0f}, max {max(tput):.0f})")
    ratio = (statistics.median(x["cpu_per_task_us"] for x in runs[True])
             / statistics.median(x["cpu_per_task_us"] for x in runs[False]))
    print(f"CPU per task, on / off (medians): {ratio:.3f}")


if __name__ == "__main__":
    main()
