"""Side-by-side end-to-end benchmark: celery-asyncio against upstream Celery, one run.

Upstream Celery runs from the pinned venv bench/peers.py makes (``.cache/peers/celery``:
``celery[redis]`` at the version in ``peers.VENVS``, with hiredis; made on first use, never one
of our dependencies), tuned as its docs advise for many short tasks (no gossip, mingle or
heartbeat, ``-O fair``, a prefetch multiplier) at the machine's core count and at a high
concurrency. Runs are interleaved (ours, upstream, ours, ...) so all see the same machine
load; every figure is the median of --rounds with its minimum and maximum. Worker CPU counts
the worker's whole process tree (prefork's children too: bench/driver.py).

    .venv/bin/python bench/compare.py --tasks 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "bench" / "driver.py"
sys.path.insert(0, str(ROOT / "bench"))
import peers  # noqa: E402  (bench/peers.py: the pinned upstream venv)

CPUS = os.cpu_count() or 2
TUNING = ["--without-gossip", "--without-mingle", "--without-heartbeat", "-O", "fair"]


def _upstream(pool: str, concurrency: int, prefetch: int) -> tuple[str, str, list[str]]:
    return (f"upstream Celery {pool} c={concurrency}, prefetch x{prefetch}", "upstream",
            ["--", "-P", pool, "-c", str(concurrency), "--prefetch-multiplier", str(prefetch),
             *TUNING])


CONFIGS = [
    ("celery-asyncio sync noop, 1 loop + 4 sync workers", "ours",
     ["--task", "bench.noop", "--", "--loop-workers", "1", "--sync-workers", "4"]),
    ("celery-asyncio async noop, 1 loop worker", "ours",
     ["--task", "bench.anoop", "--", "--loop-workers", "1", "--sync-workers", "1"]),
    _upstream("threads", CPUS, 64),
    _upstream("threads", 64, 4),
    _upstream("prefork", CPUS, 64),
    _upstream("prefork", 16, 4),
]
FIGURES = ["tasks_per_s", "publish_per_s", "worker_cpu_us_per_task", "rtt_p50_ms", "rtt_p99_ms"]


def run(python: Path, tasks: int, extra: list[str]) -> dict:
    out = subprocess.run([str(python), str(DRIVER), "--tasks", str(tasks), *extra],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"benchmark failed ({python}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(results: list[dict]) -> dict:
    """One configuration's rounds: each figure's median, and under "spread" its min and max."""
    figures = {k: statistics.median(r[k] for r in results) for k in FIGURES}
    spread = {k: [min(r[k] for r in results), max(r[k] for r in results)] for k in FIGURES}
    return {"impl": results[0]["impl"], "worker": results[0]["worker"],
            "tasks": results[0]["tasks"], **figures, "rounds": len(results), "spread": spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "peers",
                        help="where bench/peers.py keeps the peer venvs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    pythons = {"ours": Path(sys.executable), "upstream": peers.peer_python(args.cache, "celery")}
    rounds: dict[str, list[dict]] = {label: [] for label, _, _ in CONFIGS}
    for _ in range(args.rounds):
        for label, impl, extra in CONFIGS:
            rounds[label].append(run(pythons[impl], args.tasks, extra))
    medians = {label: median_of(results) for label, results in rounds.items()}
    if args.json:
        print(json.dumps(medians, indent=2))
        return
    base_label = max((label for label, impl, _ in CONFIGS if impl == "upstream"),
                     key=lambda label: medians[label]["tasks_per_s"])
    base = medians[base_label]["tasks_per_s"]
    print(f"{args.tasks} no-op tasks, one producer (delay() then get() each), results in Redis; "
          f"median [min..max] of {args.rounds} interleaved rounds; ratios against the upstream "
          f"configuration with the highest median ({base_label})")
    print(f"{'configuration':52} {'tasks/s':>22} {'vs upstream':>11} {'worker CPU/task':>16} "
          f"{'RTT p50':>8} {'RTT p99':>8}")
    for label, _, _ in CONFIGS:
        r = medians[label]
        low, high = r["spread"]["tasks_per_s"]
        rate = f"{r['tasks_per_s']:.0f} [{low:.0f}..{high:.0f}]"
        print(f"{label:52} {rate:>22} {r['tasks_per_s'] / base:10.2f}x "
              f"{r['worker_cpu_us_per_task']:13.0f} µs {r['rtt_p50_ms']:6.2f}ms {r['rtt_p99_ms']:6.2f}ms")


if __name__ == "__main__":
    main()
