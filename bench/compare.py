"""Side-by-side end-to-end benchmark: celery-asyncio against upstream Celery, one run.

Upstream Celery runs from its own throwaway venv (default .cache/upstream-celery, made on
first use; never one of our dependencies). Runs are interleaved (ours, upstream, ours, ...)
so both see the same machine load; the best of --rounds is reported for each configuration.

    .venv/bin/python bench/compare.py --tasks 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "bench" / "driver.py"
UPSTREAM_REQUIREMENT = "celery[redis]>=5.5,<6"

CONFIGS = [
    ("celery-asyncio sync noop, 1 loop + 4 sync workers", "ours",
     ["--task", "bench.noop", "--", "--loop-workers", "1", "--sync-workers", "4"]),
    ("celery-asyncio async noop, 1 loop worker", "ours",
     ["--task", "bench.anoop", "--", "--loop-workers", "1", "--sync-workers", "1"]),
    ("upstream Celery threads c=8", "upstream", ["--", "-P", "threads", "-c", "8"]),
    ("upstream Celery prefork c=2", "upstream", ["--", "-P", "prefork", "-c", "2"]),
]


def upstream_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", UPSTREAM_REQUIREMENT], check=True)
    return python


def run(python: Path, tasks: int, extra: list[str]) -> dict:
    out = subprocess.run([str(python), str(DRIVER), "--tasks", str(tasks), *extra],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"benchmark failed ({python}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstream-venv", type=Path, default=ROOT / ".cache" / "upstream-celery")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    pythons = {"ours": Path(sys.executable), "upstream": upstream_python(args.upstream_venv)}
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for label, impl, extra in CONFIGS:
            result = run(pythons[impl], args.tasks, extra)
            if label not in best or result["tasks_per_s"] > best[label]["tasks_per_s"]:
                best[label] = result
    if args.json:
        print(json.dumps(best, indent=2))
        return
    base = max(best[label]["tasks_per_s"] for label, impl, _ in CONFIGS if impl == "upstream")
    print(f"{args.tasks} no-op tasks, one producer (delay() then get() each), results in Redis, "
          f"best of {args.rounds}")
    print(f"{'configuration':52} {'tasks/s':>9} {'vs best upstream':>16} {'worker CPU/task':>16} "
          f"{'RTT p50':>8} {'RTT p99':>8}")
    for label, _, _ in CONFIGS:
        r = best[label]
        print(f"{label:52} {r['tasks_per_s']:9.0f} {r['tasks_per_s'] / base:15.2f}x "
              f"{r['worker_cpu_us_per_task']:13.0f} µs {r['rtt_p50_ms']:6.2f}ms {r['rtt_p99_ms']:6.2f}ms")


if __name__ == "__main__":
    main()
