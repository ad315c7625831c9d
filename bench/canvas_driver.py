"""One canvas benchmark run with whichever Celery this Python imports (bench/canvas.py).

``run`` mode starts a worker subprocess on bench/canvasapp.py, then from this process (one
client, blocking API) measures, after a warm-up:

* ``rtt``: sequential ``echo.delay().get()`` round trips (p50/p99);
* each ``group_*`` workload: ``group(task.s(i) for i in range(members)).delay().get()``,
  the group built, sent and every result joined inside the timed span (tasks/s = members /
  span, best of ``--reps``), every value checked; the worker's CPU per member (its process
  tree, from /proc);
* each ``chord_*`` workload: ``chord(header)(tsum.s()).get()`` likewise (tasks/s counts
  the header's members), the sum checked;
* each ``chain_*`` workload: ``chain(add.s(0, 1), add.s(1), ...)`` of ``--chain-steps``
  steps, ``delay().get()``, ``--chain-samples`` times one after the other: p50 of the
  total, per step (total / steps), and per step over this run's round-trip p50 (of an
  ``async def`` task for the ``_async`` chain).

Prints one JSON object. ``send-count`` mode starts no worker: it sends through the URL it
is given (bench/canvas.py's counting proxy) whatever the parent asks on stdin ("group",
"chord"), a line per send with its duration, so that the parent can count commands and
round trips.
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
import harness  # noqa: E402  (standard library only: flush_db, process_tree)

#: name -> (kind, task name, ours only). Members get (i,); chains add 1 per step.
WORKLOADS = {
    "group_noop": ("group", "canvas.echo", False),
    "group_noop_async": ("group", "canvas.aecho", True),
    "chord_noop": ("chord", "canvas.echo", False),
    "chord_noop_async": ("chord", "canvas.aecho", True),
    "chain_noop": ("chain", "canvas.add", False),
    "chain_noop_async": ("chain", "canvas.aadd", True),
    "group_redis": ("group", "canvas.redis_work", False),
    "group_redis_async": ("group", "canvas.aredis_work", True),
    "chord_redis": ("chord", "canvas.redis_work", False),
    "chord_redis_async": ("chord", "canvas.aredis_work", True),
    "group_cpu": ("group", "canvas.cpu_work", False),
    "chord_cpu": ("chord", "canvas.cpu_work", False),
}


def cpu_seconds(pid: int) -> float:
    ticks = sum(int(f[harness.UTIME]) + int(f[harness.STIME]) + int(f[harness.CUTIME])
                + int(f[harness.CSTIME]) for f in harness.process_tree(pid).values())
    return ticks / harness.CLOCK_TICKS


def start_worker(worker_args: list[str], log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "canvasapp", "worker", "-l", "warning",
            *worker_args]
    env = dict(os.environ, PYTHONPATH=str(HERE), C_FORCE_ROOT="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(worker: subprocess.Popen) -> None:
    tree = list(harness.process_tree(worker.pid))
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:  # prefork children left behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if worker.poll() is None:
        worker.wait(10)


def confirm(app) -> None:
    """Wait for the broker's replies to pipelined publishes (ours; upstream waits each)."""
    confirm_published = getattr(app, "_confirm_published", None)
    if confirm_published is not None:
        confirm_published()


def canvas_of(kind: str, task, members: int, steps: int):
    from canvasapp import tsum

    from celery import chain, chord, group

    if kind == "group":
        return group(task.s(i) for i in range(members))
    if kind == "chord":
        return chord((task.s(i) for i in range(members)), tsum.s())
    return chain(task.s(0, 1), *[task.s(1) for _ in range(steps - 1)])


def expected(name: str, kind: str, members: int, steps: int, value) -> bool:
    if kind == "chain":
        return value == steps
    if "redis" in name:  # counters shared by all members: only the shape can be checked
        return len(value) == members if kind == "group" else isinstance(value, int)
    if kind == "group":
        return value == list(range(members))
    return value == sum(range(members))


def measure_canvas(name: str, args, worker: subprocess.Popen) -> dict:
    from canvasapp import app

    kind, task_name, _ = WORKLOADS[name]
    task = app.tasks[task_name]
    canvas_of(kind, task, 4, 2).delay().get(timeout=60)  # warm-up of this shape
    if kind == "chain":
        totals = []
        for _ in range(args.chain_samples):
            start = time.perf_counter()
            value = canvas_of(kind, task, 0, args.chain_steps).delay().get(timeout=60)
            totals.append(time.perf_counter() - start)
            if not expected(name, kind, 0, args.chain_steps, value):
                raise SystemExit(f"{name}: wrong value {value!r}")
        totals.sort()
        return {"total_p50_ms": harness.percentile(totals, 0.5) * 1e3,
                "step_p50_ms": harness.percentile(totals, 0.5) * 1e3 / args.chain_steps,
                "samples": len(totals)}
    best: dict = {}
    for _ in range(args.reps):
        cpu0, start = cpu_seconds(worker.pid), time.perf_counter()
        result = canvas_of(kind, task, args.members, 0).delay()
        confirm(app)
        sent = time.perf_counter()
        value = result.get(timeout=600)
        span, cpu = time.perf_counter() - start, cpu_seconds(worker.pid) - cpu0
        if not expected(name, kind, args.members, 0, value):
            raise SystemExit(f"{name}: wrong value {str(value)[:200]}")
        if not best or span < best["span_s"]:
            best = {"span_s": span, "tasks_per_s": args.members / span,
                    "send_ms": (sent - start) * 1e3,
                    "worker_cpu_us_per_task": cpu / args.members * 1e6}
    return best


def measure_rtt(task, samples: int) -> dict:
    durations = []
    for _ in range(samples):
        start = time.perf_counter()
        task.delay(1).get(timeout=30)
        durations.append(time.perf_counter() - start)
    durations.sort()
    return {"p50_ms": harness.percentile(durations, 0.5) * 1e3,
            "p99_ms": harness.percentile(durations, 0.99) * 1e3}


def run(args) -> None:
    harness.flush_db(args.url)
    from canvasapp import app

    import celery

    ours = getattr(app.conf, "worker_loop_workers", None) is not None
    names = [n for n in args.workloads.split(",") if n and (ours or not WORKLOADS[n][2])]
    worker = start_worker(args.worker_args, args.log)
    try:
        echo = app.tasks["canvas.echo"]
        echo.delay(1).get(timeout=60)  # the worker is consuming
        for _ in range(200):
            echo.delay(1).get(timeout=30)
        out = {"impl": getattr(celery, "VERSION_BANNER", celery.__version__),
               "worker": " ".join(args.worker_args), "members": args.members,
               "chain_steps": args.chain_steps, "rtt": measure_rtt(echo, args.rtt_samples)}
        if ours:
            out["rtt_async"] = measure_rtt(app.tasks["canvas.aecho"], args.rtt_samples)
        for name in names:
            out[name] = measure_canvas(name, args, worker)
            if WORKLOADS[name][0] == "chain":  # against the round trip of this same run
                rtt = out["rtt_async" if name.endswith("_async") else "rtt"]["p50_ms"]
                out[name]["step_over_rtt"] = out[name]["step_p50_ms"] / rtt
    finally:
        stop_worker(worker)
        harness.flush_db(args.url)
    print(json.dumps(out))


def send_count(args) -> None:
    """Send what stdin asks for, through ``--url``; no worker (bench/canvas.py counts)."""
    from canvasapp import app, echo

    for kind in ("group", "chord"):  # connections made, scripts loaded, code warm
        canvas_of(kind, echo, 8, 0).delay()
    confirm(app)
    print("ready", flush=True)
    for line in sys.stdin:
        kind = line.strip()
        start = time.perf_counter()
        canvas_of(kind, echo, args.members, 0).delay()
        confirm(app)
        print(json.dumps({"kind": kind, "seconds": time.perf_counter() - start}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, usage="%(prog)s MODE [OPTIONS] [-- WORKER OPTIONS]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["run", "send-count"])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--chain-steps", type=int, default=10)
    parser.add_argument("--chain-samples", type=int, default=30)
    parser.add_argument("--rtt-samples", type=int, default=300)
    parser.add_argument("--reps", type=int, default=2, help="runs of each group/chord workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--log", type=Path, default=HERE.parent / ".cache" / "canvas-worker.log",
                        help="the worker's output")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.worker_args = argv[split + 1:]  # after --: options for 'celery worker'
    os.environ["BENCH_URL"] = args.url
    sys.path.insert(0, str(HERE))
    run(args) if args.mode == "run" else send_count(args)


if __name__ == "__main__":
    main()
