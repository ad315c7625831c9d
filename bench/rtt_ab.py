"""Round trips side by side: two installs of celery-asyncio, interleaved, on one Redis.

    .venv/bin/python bench/rtt_ab.py --base /tmp/basevenv/bin/python --pairs 10

Each run starts a worker on bench/benchapp.py (1 loop worker x 100 + 4 sync workers, as
bench/peers.py runs ours) with one interpreter, then a client with the same interpreter that
sends no-op tasks one at a time (``delay().get()``): 200 to warm up, then ``--samples``.
Runs alternate between ``--base`` and ``--current`` (default: this tree's .venv) ``--pairs``
times. The report gives, per side, the median over its runs (and the range) of the
round-trip p50 and p99, and of the client's and the worker's CPU per round trip (user +
system, from the process itself and from /proc). The machines are shared and noisy: compare
medians of many short runs, never single runs. Uses Redis database 13, flushed before each
run. Make the base venv with e.g. ``git worktree add /tmp/base <rev>``, ``python3 -m venv
/tmp/basevenv``, ``/tmp/basevenv/bin/pip install "/tmp/base[redis,uvloop,msgpack]"``.

``--base-args``/``--current-args`` add worker options to one side, so one install can be
compared with itself under two settings:

    .venv/bin/python bench/rtt_ab.py --base .venv/bin/python --current-args=--loop-inline --async
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import valkey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "peers"))
import harness  # noqa: E402 - bench/peers/harness.py: its /proc reader

URL = "redis://127.0.0.1:6379/13"
WORKER = ["-m", "celery", "-A", "benchapp", "worker", "--loop-workers", "1",
          "--loop-concurrency", "100", "--sync-workers", "4", "-l", "warning"]
WARM_UP = 200

# Run by each side's interpreter, with bench/ on its path.
CLIENT = """
import json, os, sys, time
import benchapp
task = benchapp.anoop if os.environ["RTT_ASYNC"] == "1" else benchapp.noop
for _ in range(%(warm)d):
    task.delay().get(timeout=30)
print("warm", flush=True)
sys.stdin.readline()  # the parent reads the worker's CPU time, then says go
n, samples = %(samples)d, []
cpu = time.process_time()
for _ in range(n):
    start = time.perf_counter()
    task.delay().get(timeout=30)
    samples.append(time.perf_counter() - start)
cpu = time.process_time() - cpu
samples.sort()
print(json.dumps({"p50_us": samples[n // 2] * 1e6, "p99_us": samples[int(n * 0.99)] * 1e6,
                  "client_cpu_us": cpu / n * 1e6}))
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants, read as bench/peers.py reads it."""
    tree = harness.process_tree(pid).values()
    return sum(int(f[harness.UTIME]) + int(f[harness.STIME]) for f in tree) / harness.CLOCK_TICKS


def one_run(python: str, samples: int, use_async: bool, extra: list[str],
            url: str = URL) -> dict:
    valkey.Valkey.from_url(url).flushdb()
    env = {**os.environ, "BENCH_URL": url, "RTT_ASYNC": "1" if use_async else "0",
           "PYTHONPATH": str(ROOT / "bench")}
    worker = subprocess.Popen([python, *WORKER, *extra], cwd=ROOT / "bench", env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code = CLIENT % {"warm": WARM_UP, "samples": samples}
    client = subprocess.Popen([python, "-c", code], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdin is not None and client.stdout is not None
        if client.stdout.readline().strip() != "warm":
            raise RuntimeError(f"client failed warming up (exit {client.wait(30)})")
        before = cpu_seconds(worker.pid)
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=300)
        if client.returncode:
            raise RuntimeError(f"client failed (exit {client.returncode})")
        result = json.loads(out.strip().splitlines()[-1])
        result["worker_cpu_us"] = (cpu_seconds(worker.pid) - before) / samples * 1e6
        return result
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def report(runs: dict[str, list[dict]]) -> None:
    keys = ("p50_us", "p99_us", "client_cpu_us", "worker_cpu_us")
    print(f"{'side':8} {'runs':>4}  " + "  ".join(f"{k:>24}" for k in keys))
    medians = {}
    for side, results in runs.items():
        cells = []
        for key in keys:
            values = [r[key] for r in results]
            medians[(side, key)] = statistics.median(values)
            cells.append(f"{medians[(side, key)]:7.0f} [{min(values):6.0f}-{max(values):6.0f}]")
        print(f"{side:8} {len(results):>4}  " + "  ".join(f"{c:>24}" for c in cells))
    def change(key: str) -> str:
        # CPU is read from /proc in clock ticks (10 ms): a short run may read 0 on a side.
        base = medians[("base", key)]
        return f"{medians[('current', key)] / base - 1:+.1%}" if base else "n/a (base 0)"

    print("current / base: " + ", ".join(f"{key} {change(key)}" for key in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the base side's python")
    parser.add_argument("--current", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--url", default=URL, help="Redis database, flushed before each run "
                        "[%(default)s]")
    parser.add_argument("--async", dest="use_async", action="store_true",
                        help="an async def no-op instead of a def one")
    for side in ("base", "current"):
        parser.add_argument(f"--{side}-args", default="", metavar="OPTIONS",
                            help=f"more worker options for the {side} side (one string)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"base": [], "current": []}
    for n in range(args.pairs):
        for side in (("base", "current") if n % 2 == 0 else ("current", "base")):
            started = time.monotonic()
            python = str(Path(getattr(args, side)).absolute())  # the worker runs in bench/
            extra = shlex.split(getattr(args, f"{side}_args"))
            runs[side].append(one_run(python, args.samples, args.use_async, extra, args.url))
            print(f"pair {n + 1}/{args.pairs} {side:8} p50 {runs[side][-1]['p50_us']:6.0f} us "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    report(runs)


if __name__ == "__main__":
    main()
