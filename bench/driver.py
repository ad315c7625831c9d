"""One end-to-end benchmark run with whichever Celery this Python imports.

Starts a worker subprocess, then from this process (one producer):
  * throughput: N no-op tasks sent with delay(), all results stored and fetched with get();
  * latency: sequential delay().get() round trips (p50/p99);
  * worker CPU time (user+sys) per task during the throughput phase, from /proc: the worker's
    whole process tree (a prefork pool's children included, and children they reaped).
Prints one JSON object. Run through bench/compare.py, which runs it for each implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from harness import tree_cpu_seconds as cpu_seconds  # noqa: E402  (standard library only)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--task", default="bench.noop")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("worker_args", nargs=argparse.REMAINDER,
                        help="after --: options for 'celery worker'")
    args = parser.parse_args()
    os.environ["BENCH_URL"] = args.url
    sys.path.insert(0, str(HERE))
    import valkey_or_redis  # noqa: F401  (see below: flushes the db)
    from benchapp import app

    import celery

    worker_cmd = [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "-l", "warning",
                  *[a for a in args.worker_args if a != "--"]]
    env = dict(os.environ, PYTHONPATH=str(HERE), C_FORCE_ROOT="1")
    worker = subprocess.Popen(worker_cmd, cwd=HERE, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        send = app.tasks[args.task] if args.task in app.tasks else None
        if send is None:
            raise SystemExit(f"unknown task {args.task}")
        send.delay().get(timeout=60)  # warm-up: the worker is consuming
        for _ in range(200):
            send.delay().get(timeout=30)

        cpu0, t0 = cpu_seconds(worker.pid), time.perf_counter()
        results = [send.delay() for _ in range(args.tasks)]
        t_sent = time.perf_counter()
        for r in results:
            r.get(timeout=300)
        t1, cpu1 = time.perf_counter(), cpu_seconds(worker.pid)

        samples = []
        for _ in range(args.latency_samples):
            s = time.perf_counter()
            send.delay().get(timeout=30)
            samples.append(time.perf_counter() - s)
        samples.sort()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        app.close() if hasattr(app, "close") else None

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000

    print(json.dumps({
        "impl": getattr(celery, "VERSION_BANNER", celery.__version__),
        "worker": " ".join(args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args),
        "tasks": args.tasks,
        "tasks_per_s": args.tasks / (t1 - t0),
        "publish_per_s": args.tasks / (t_sent - t0),
        "worker_cpu_us_per_task": (cpu1 - cpu0) / args.tasks * 1e6,
        "rtt_p50_ms": pct(0.50),
        "rtt_p99_ms": pct(0.99),
    }))


if __name__ == "__main__":
    main()
