"""The Redis transport's fetch path side by side: two installs of celery-asyncio,
interleaved, on one Redis.

    .venv/bin/python bench/redis_fetch.py --base .cache/perf-gate/venv/bin/python --rounds 3

Each run (a child process of one interpreter) publishes ``--tasks`` messages, then fetches
them in batches of ``--batch`` through ``RedisTransport.fetch`` (no blocking wait) and acks
each batch. It reports the wall time per message and Redis's own CPU per message (the
server's ``used_cpu_user + used_cpu_sys`` over the fetch loop): what the fetch script and the
ack cost the server, the part a change to the script moves. Runs alternate between
``--base`` and ``--current`` (default: this tree's .venv) for every batch size; the report
gives each side's median over ``--rounds`` with its range. Uses Redis database 12, flushed
before and after each run. ``bash ci/perf-gate.sh`` builds a base venv
(``.cache/perf-gate/venv``); bench/rtt_ab.py says how to make one by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
URL = "redis://127.0.0.1:6379/12"


def _server_cpu(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _run(tasks: int, batch: int) -> dict[str, float]:
    """One run, in this interpreter: per-message wall and server CPU, in microseconds."""
    import valkey

    from celery.messaging.protocol import build_task_message
    from celery.transport.redis import RedisTransport

    raw = valkey.Valkey.from_url(URL)
    raw.flushdb()
    transport = RedisTransport(URL)
    payloads = [transport.envelope_of(build_task_message("bench.t", (i,), task_id=f"f-{i}"))[1]
                for i in range(tasks)]
    for i in range(0, tasks, 1000):
        raw.lpush("celery", *payloads[i:i + 1000])
    got = 0
    cpu, wall = _server_cpu(raw), time.perf_counter()
    while got < tasks:
        deliveries = await transport.fetch(["celery"], batch, 0)
        if not deliveries:
            raise SystemExit(f"the queue ran dry after {got} of {tasks} messages")
        got += len(deliveries)
        await transport.ack(deliveries)
    wall, cpu = time.perf_counter() - wall, _server_cpu(raw) - cpu
    await transport.aclose()
    transport.close()
    raw.flushdb()
    return {"wall_us": wall / tasks * 1e6, "server_cpu_us": cpu / tasks * 1e6}


def _side(python: str, tasks: int, batch: int) -> dict[str, float]:
    done = subprocess.run([python, __file__, "--child", str(tasks), str(batch)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(asyncio.run(_run(int(sys.argv[2]), int(sys.argv[3])))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the base side's python")
    parser.add_argument("--current", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 20])
    args = parser.parse_args()
    # Absolute, not resolved: a venv's python is a link that must keep its venv.
    sides = {"base": os.path.abspath(args.base), "current": os.path.abspath(args.current)}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for batch in args.batch:
            for name, python in sides.items():
                runs.setdefault((name, batch), []).append(_side(python, args.tasks, batch))
    print(f"{args.tasks} messages per run, {args.rounds} rounds; median [min..max]")
    print(f"{'side':8} {'batch':>5} {'wall us/msg':>24} {'Redis CPU us/msg':>24}")
    for (name, batch), results in runs.items():
        cells = []
        for key in ("wall_us", "server_cpu_us"):
            values = [r[key] for r in results]
            cells.append(f"{statistics.median(values):.1f} [{min(values):.1f}..{max(values):.1f}]")
        print(f"{name:8} {batch:>5} {cells[0]:>24} {cells[1]:>24}")


if __name__ == "__main__":
    main()
