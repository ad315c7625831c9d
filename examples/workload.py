"""The main job: start a worker, feed it a mixed workload, show progress, print a summary.

    python examples/workload.py [--tasks 3000] [--loop-workers 2] [--sync-workers 2]

The worker runs as a separate process (``celery -A workload_app worker``), exactly as a
user would run it; this script is the producer. Both stop by themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The worker logs here (task failures are logged with their tracebacks).
LOGFILE = HERE.parent / ".cache" / "workload-worker.log"
sys.path.insert(0, str(HERE))

from workload_app import BACKEND, BROKER, DATA, app, checksum, fetch_page, flaky  # noqa: E402

from celery.utils.text import mask_url  # noqa: E402


def progress(done: int, total: int, failed: int, started: float) -> None:
    width = 40
    filled = int(width * done / total)
    rate = done / max(time.perf_counter() - started, 1e-9)
    sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                     f"{rate:7.0f} tasks/s  failed {failed}")
    sys.stdout.flush()


async def feed_and_wait(total: int) -> tuple[list[float], int, float]:
    """Send ``total`` tasks (a mix of the three kinds) and await every result."""
    latencies: list[float] = []
    failed = 0
    done = 0
    started = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal failed, done
        sent = time.perf_counter()
        kind = i % 10
        if kind < 6:
            result = await fetch_page.adelay(i)
        elif kind < 9:
            result = await checksum.adelay(i)
        else:
            result = await flaky.adelay(i)
        try:
            await result.aget(timeout=120)
        except Exception:
            failed += 1
        latencies.append(time.perf_counter() - sent)
        done += 1

    async def ticker() -> None:
        while done < total:
            progress(done, total, failed, started)
            await asyncio.sleep(0.1)

    tick = asyncio.create_task(ticker())
    # at most 500 tasks outstanding, like a steady producer would keep
    gate = asyncio.Semaphore(500)

    async def gated(i: int) -> None:
        async with gate:
            await one(i)

    await asyncio.gather(*(gated(i) for i in range(total)))
    elapsed = time.perf_counter() - started
    await tick
    progress(done, total, failed, started)
    print()
    return latencies, failed, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--loop-workers", type=int, default=2)
    parser.add_argument("--loop-concurrency", type=int, default=200)
    parser.add_argument("--sync-workers", type=int, default=2)
    args = parser.parse_args()

    DATA.mkdir(parents=True, exist_ok=True)
    for stale in DATA.glob("*.db*"):  # start from empty SQLite files every run
        stale.unlink()
    app.portal.call(app.transport.purge("celery"))
    LOGFILE.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-q", "-A", "workload_app", "worker", "-l", "warning",
         f"--logfile={LOGFILE}",
         f"--loop-workers={args.loop_workers}", f"--loop-concurrency={args.loop_concurrency}",
         f"--sync-workers={args.sync_workers}"], cwd=HERE, env=env)
    print(f"broker {mask_url(BROKER)}, results {mask_url(BACKEND)}")
    print(f"worker pid {worker.pid}: {args.loop_workers} loop workers x "
          f"{args.loop_concurrency} + {args.sync_workers} sync workers; sending {args.tasks} tasks "
          "(60% async I/O 10 ms, 30% sync CPU, 10% sometimes failing)")
    try:
        latencies, failed, elapsed = asyncio.run(feed_and_wait(args.tasks))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        app.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    expected_failures = sum(1 for i in range(args.tasks) if i % 10 == 9 and i % 7 == 0)
    print(f"tasks      {len(latencies)} ({failed} failed; {expected_failures} were designed to fail)")
    print(f"throughput {len(latencies) / elapsed:.0f} tasks/s over {elapsed:.2f} s")
    print(f"latency    p50 {pct(0.5):.1f} ms   p90 {pct(0.9):.1f} ms   p99 {pct(0.99):.1f} ms "
          "(send to result received, with up to 500 in flight)")
    print(f"worker     exited with code {worker.returncode}; its log: {LOGFILE}")
    return 0 if failed == expected_failures and worker.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
