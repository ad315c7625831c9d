"""Beat's own costs, measured with real ``celery beat`` processes (issue: periodic tasks).

    .venv/bin/python bench/beat.py                       # SQLite and Redis, 5-minute jitter run
    .venv/bin/python bench/beat.py --jitter-seconds 60 --broker sqlite --json beat.json

Two measurements per broker:

* **Idle CPU**: beat with ``--entries`` entries (default 1,000), none due during the
  window (periods of an hour and more), for ``--idle-seconds``: the CPU time beat's process
  used, per minute. What is left is the leader lease (a renewal every 2 s) and nothing
  that grows with the number of entries: beat sleeps until the next entry is due.
* **Send jitter**: one entry every second for ``--jitter-seconds`` (default 300): how late
  each send is, from beat's log line for it (``%(created)``), against the time it was due
  (one second after the previous send: an interval schedule counts from the last run).
  p50, p99 and max in milliseconds. Each send includes the claim through the leader lease
  and the write of the state file, both before the task is published.

Nothing consumes the sent tasks (they are counted, then the broker is dropped). Each
broker's run uses a fresh temporary directory; the Redis run flushes ``--redis-db`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

APP = '''
import os
from celery import Celery

app = Celery("beatbench", broker=os.environ["BEATBENCH_BROKER"])
app.conf.worker_log_format = "[%(levelname)s@%(created).6f] %(message)s"
ENTRIES = int(os.environ["BEATBENCH_ENTRIES"])
if ENTRIES:
    app.conf.beat_schedule = {
        f"idle-{i}": {"task": "beatbench.noop", "schedule": 3600.0 + i}
        for i in range(ENTRIES)
    }
else:
    app.conf.beat_schedule = {"every-second": {"task": "beatbench.noop", "schedule": 1.0}}


@app.task(name="beatbench.noop")
def noop():
    return None
'''


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_beat(folder: Path, broker: str, entries: int) -> subprocess.Popen[str]:
    (folder / "beatbench.py").write_text(APP)
    env = dict(os.environ, BEATBENCH_BROKER=broker, BEATBENCH_ENTRIES=str(entries),
               PYTHONPATH=os.pathsep.join(filter(None, [str(folder), str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "beatbench", "beat",
                             "-l", "INFO"], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise SystemExit(f"beat did not log {text!r}:\n{''.join(lines)}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise SystemExit(f"beat exited {proc.returncode}:\n{out}")
    return out


def idle_cpu(broker: str, entries: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="beatbench-") as tmp:
        proc = start_beat(Path(tmp), url_in(broker, tmp), entries)
        wait_for(proc, "is the sender now")
        time.sleep(2)  # start-up done
        before, started = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu_seconds(proc.pid) - before, time.monotonic() - started
        out = stop(proc)
    sent = out.count("Sending due task")
    return {"entries": entries, "seconds": round(elapsed, 1), "sent": sent,
            "cpu_ms_per_minute": round(used / elapsed * 60_000, 1),
            "cpu_percent_of_a_core": round(used / elapsed * 100, 3)}


def jitter(broker: str, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="beatbench-") as tmp:
        proc = start_beat(Path(tmp), url_in(broker, tmp), 0)
        wait_for(proc, "is the sender now")
        time.sleep(seconds)
        out = stop(proc)
    times = [float(line.split("]")[0].split("@")[-1]) for line in out.splitlines()
             if "Sending due task every-second" in line]
    late = sorted((b - a - 1.0) * 1000 for a, b in zip(times, times[1:], strict=False))
    if len(late) < 10:
        raise SystemExit(f"too few sends ({len(times)}) to measure:\n{out}")
    return {"sends": len(times), "p50_ms": round(statistics.median(late), 2),
            "p99_ms": round(late[min(len(late) - 1, int(len(late) * 0.99))], 2),
            "max_ms": round(late[-1], 2), "min_ms": round(late[0], 2)}


def url_in(broker: str, folder: str) -> str:
    return f"sqlite:///{folder}/broker.db" if broker == "sqlite" else broker


def flush(url: str) -> None:
    import valkey

    client = valkey.Valkey.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", action="append", choices=("sqlite", "redis"),
                        help="repeatable; default both")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--jitter-seconds", type=float, default=300)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report: dict[str, object] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "brokers": {}}
    for kind in args.broker or ["sqlite", "redis"]:
        broker = "sqlite" if kind == "sqlite" else f"redis://127.0.0.1:6379/{args.redis_db}"
        if kind == "redis":
            flush(broker)
        idle = idle_cpu(broker, args.entries, args.idle_seconds)
        print(f"{kind}: idle with {idle['entries']} entries: {idle['cpu_ms_per_minute']} ms "
              f"CPU per minute ({idle['cpu_percent_of_a_core']} % of a core), "
              f"{idle['sent']} sent", flush=True)
        late = jitter(broker, args.jitter_seconds)
        print(f"{kind}: a 1 s entry over {args.jitter_seconds:.0f} s ({late['sends']} sends): "
              f"late by p50 {late['p50_ms']} ms, p99 {late['p99_ms']} ms, max "
              f"{late['max_ms']} ms", flush=True)
        report["brokers"][kind] = {"idle": idle, "jitter": late}  # type: ignore[index]
        if kind == "redis":
            flush(broker)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
