"""Peer comparison: celery-asyncio against upstream Celery, dramatiq, taskiq and arq, one run.

    .venv/bin/python bench/peers.py --rounds 2 --json peers.json
    .venv/bin/python bench/peers.py --quick --rounds 1            # smoke test, small counts
    .venv/bin/python bench/peers.py --only ours,taskiq --tasks 5000

Every implementation runs the same three workloads end to end, each against the same local
Redis (``--url``, database 11 by default; flushed before and after every run):

1. no-op burst: ``--tasks`` no-op tasks, each sent with one framework call (``delay()``,
   ``send()``, ``kiq()``, ``enqueue_job()``), then every result awaited in send order; tasks/s
   from the first send to the last result, and the worker's CPU time per task (user+system of
   the worker process tree, from /proc);
2. round-trip latency: ``--latency-samples`` sequential send-and-wait no-op tasks, p50/p99;
   next to it the floors (bench/peers/redis_ping.py: sequential PINGs, and a bare queue round
   trip through a second process), with redis-py and with our client library, valkey-py;
3. I/O drain: ``--io-tasks`` tasks that each sleep 10 ms (``await asyncio.sleep`` where the
   framework runs coroutines, ``time.sleep`` on threads otherwise), tasks/s until all results
   are in;
4. one Redis call: ``--call-tasks`` tasks whose body makes one Redis round trip (an INCR with
   the process's blocking client: bench/peers/redis_call.py), on the no-op worker; tasks/s
   and worker CPU per task (ours, Celery and dramatiq only).

``ours-processes`` is ours with ``--processes 2`` (two worker processes under one
supervisor), the configuration that uses both cores of a GIL build; ``ours-pipelined`` is
ours with one process to compare it with. Both publish pipelined (``publish_pipeline``): the
producer's sequential ``delay()`` round trips otherwise cap a burst near 5,000 tasks/s on
2 cores, and the burst then measures the producer, not how fast the worker drains:

    .venv/bin/python bench/peers.py --only ours-pipelined,ours-processes,dramatiq,celery-threads \
        --tasks 500 --latency-samples 100 --io-tasks 0 --call-tasks 3000 --rounds 1

Each peer is installed into its own throwaway venv under ``.cache/peers/<name>`` (made on
first use, pinned versions below; never one of our dependencies). Ours runs from
``.venv``. A run is one process, bench/peers/harness.py, in that venv: it starts the worker,
drives it with the peer's producer (bench/peers/<peer>_peer.py) and prints JSON. Runs are
interleaved round by round (ours, celery-threads, ..., arq, then again) so that all see the
same machine load; the best round of each configuration is reported. Every run is bounded by
``--run-timeout``; on a timeout, an error or Ctrl-C its whole process tree is stopped. A failed
run is tried again (``--retries``): the Redis server is shared, and other test suites on the
machine may kill its client connections (CLIENT KILL), which some peers' clients do not survive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / "peers"
sys.path.insert(0, str(PEERS_DIR))
import harness  # noqa: E402  (standard library only; shared with the peer venvs)
import report  # noqa: E402

#: The peer venvs and the versions they were tested with (latest releases at the time).
VENVS = {
    "celery": ["celery[redis]==5.7.0"],
    "dramatiq": ["dramatiq[redis]==2.2.1"],
    "dramatiq-amqp": ["dramatiq[rabbitmq,redis]==2.2.1"],  # bench/rabbitmq.py: pika as well
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4"],
    "arq": ["arq==0.28.0"],
}
PING_VENV = "celery"  # any venv with redis-py


@dataclass(frozen=True)
class Config:
    """One row of the table: an implementation with its worker options per workload."""

    name: str  #: what --only selects
    venv: str | None  #: a key of VENVS, or None for ours (.venv)
    module: str  #: the peer module under bench/peers/
    worker_noop: str  #: worker options for the no-op and latency workloads
    worker_io: str  #: worker options for the I/O workload ("" skips it)
    about: str  #: the configuration, for the table
    env: dict[str, str] = field(default_factory=dict)
    call: bool = True  #: the peer module has the one-Redis-call task


OURS = "--loop-workers 1 --loop-concurrency 100 --sync-workers"
ARQ = "--max-jobs 100 --poll-delay 0.005"
TASKIQ = "--workers 2 --max-async-tasks 100"
PIPELINED = json.dumps({"publish_pipeline": True})
CONFIGS = [
    Config(
        name="ours",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 4",
        worker_io=f"{OURS} 1",
        about="`def` no-op: 1 loop + 4 sync workers; I/O `async def`: 1 loop worker x 100",
    ),
    Config(
        name="ours-pipelined",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 4",
        worker_io=f"{OURS} 1",
        about="as ours; the producer publishes pipelined",
        env={"BENCH_TRANSPORT_OPTIONS": PIPELINED},
    ),
    Config(
        name="ours-processes",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 4 --processes 2",
        worker_io=f"{OURS} 1 --processes 2",
        about="as ours, in 2 worker processes (--processes 2); the producer publishes pipelined",
        env={"BENCH_TRANSPORT_OPTIONS": PIPELINED},
    ),
    Config(
        name="ours-async",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 1",
        worker_io="",
        about="`async def` no-op: 1 loop worker x 100 (I/O: as ours)",
        env={"BENCH_CELERY_NOOP": "async"},
    ),
    Config(
        name="ours-inline",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 1 --loop-inline",
        worker_io=f"{OURS} 1 --loop-inline",
        about="`async def` no-op and I/O: 1 loop worker x 100 on the consumer's own loop "
        "(--loop-inline)",
        env={"BENCH_CELERY_NOOP": "async"},
    ),
    Config(
        name="celery-threads",
        venv="celery",
        module="celery_peer",
        worker_noop="-P threads -c 8",
        worker_io="-P threads -c 100",
        about="threads pool c=8; I/O `time.sleep`: c=100",
    ),
    Config(
        name="celery-prefork",
        venv="celery",
        module="celery_peer",
        worker_noop="-P prefork -c 2",
        worker_io="-P prefork -c 16",
        about="prefork pool c=2; I/O `time.sleep`: c=16",
    ),
    Config(
        name="dramatiq",
        venv="dramatiq",
        module="dramatiq_peer",
        worker_noop="--processes 2 --threads 8",
        worker_io="--processes 2 --threads 50",
        about="2 processes x 8 threads; I/O `time.sleep`: 2 x 50; Results middleware, Redis backend",
    ),
    Config(
        name="taskiq",
        venv="taskiq",
        module="taskiq_peer",
        worker_noop=TASKIQ,
        worker_io=TASKIQ,
        about="RedisStreamBroker + RedisAsyncResultBackend, --workers 2 --max-async-tasks 100; "
        "client polls results every 1 ms",
        call=False,
    ),
    Config(
        name="arq",
        venv="arq",
        module="arq_peer",
        worker_noop=ARQ,
        worker_io=ARQ,
        about="max_jobs=100, poll_delay=5 ms; client polls results every 1 ms",
        call=False,
    ),
]
QUICK = {"tasks": 500, "io_tasks": 200, "latency_samples": 100, "ping_samples": 500,
         "call_tasks": 500}
FULL = {"tasks": 10000, "io_tasks": 2000, "latency_samples": 500, "ping_samples": 2000,
        "call_tasks": 5000}


class RunFailed(Exception):
    """One harness run did not produce figures."""


# --- venvs ---------------------------------------------------------------------------------


def peer_python(cache: Path, name: str) -> Path:
    """The venv's python, creating the venv / installing the pins when they are not there yet."""
    venv, pins = cache / name, VENVS[name]
    python, stamp = venv / "bin" / "python", venv / "bench-pins.txt"
    if python.exists() and stamp.exists() and stamp.read_text().split() == pins:
        return python
    print(f"installing {' '.join(pins)} into {venv} ...", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True, timeout=1200)
    stamp.write_text("\n".join(pins) + "\n")
    return python


# --- one run -------------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (the session a harness run was started in)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = harness._stat(int(entry))
            if fields is None or fields[harness.STATE] == "Z":
                continue
            if int(fields[harness.PGRP]) == pgid and int(fields[harness.SESSION]) == pgid:
                members.append(int(entry))
    return members


def _stop(proc: subprocess.Popen, grace: float = 45.0) -> None:
    """SIGTERM the harness (it stops its worker), then SIGKILL anything left in its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    for pid in _group_members(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(10)


def run_process(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run one harness (or ping) process in its own session; its last stdout line is JSON."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, err = proc.communicate()
        raise RunFailed(f"timed out after {timeout:.0f} s\n{err[-3000:]}") from None
    except BaseException:  # Ctrl-C included: leave no worker behind
        _stop(proc)
        raise
    finally:
        _stop(proc)
    out_lines = out.strip().splitlines()
    if proc.returncode != 0 or not out_lines:
        lines = err.splitlines()
        marked = [line for line in lines if line.startswith(harness.FAILED_MARK)]
        last = marked[-1] if marked else next((ln for ln in reversed(lines) if ln.strip()), "")
        raise RunFailed(f"exit {proc.returncode}: {last}\n{err[-3000:]}")
    return json.loads(out_lines[-1])


def _flags(options: dict[str, object]) -> list[str]:
    return [item for name, value in options.items() for item in (name, str(value))]


def run_config(config: Config, python: Path, args: argparse.Namespace) -> dict:
    """One harness run of ``config`` (both worker sessions); the database is flushed after."""
    options = {
        "--label": config.name,
        "--url": args.url,
        "--tasks": args.tasks,
        "--io-tasks": args.io_tasks if config.worker_io else 0,
        "--latency-samples": args.latency_samples,
        "--call-tasks": args.call_tasks if config.call else 0,
        "--worker-noop": config.worker_noop,
        "--worker-io": config.worker_io,
    }
    cmd = [str(python), str(PEERS_DIR / "harness.py"), config.module, *_flags(options)]
    env = dict(os.environ, **config.env)
    env.pop("PYTHONPATH", None)
    try:
        return run_process(cmd, env, args.run_timeout)
    finally:
        harness.flush_db(args.url)


def run_ping(python: Path, args: argparse.Namespace) -> dict:
    """The bare Redis round trip (bench/peers/redis_ping.py)."""
    options = {"--url": args.url, "--samples": args.ping_samples}
    return run_process(
        [str(python), str(PEERS_DIR / "redis_ping.py"), *_flags(options)], dict(os.environ), 120
    )


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [c.name for c in CONFIGS]
    parser.add_argument(
        "--tasks", type=int, help=f"no-op tasks per burst (default {FULL['tasks']})"
    )
    parser.add_argument(
        "--io-tasks", type=int, help=f"10 ms tasks per I/O burst (default {FULL['io_tasks']})"
    )
    parser.add_argument("--latency-samples", type=int, help=f"default {FULL['latency_samples']}")
    parser.add_argument(
        "--call-tasks", type=int, help=f"one-Redis-call tasks per burst (default {FULL['call_tasks']})"
    )
    parser.add_argument("--ping-samples", type=int, help=f"default {FULL['ping_samples']}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default=",".join(names), help=f"comma separated, from: {','.join(names)}"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"small counts for a smoke test: {QUICK}"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write all figures here")
    parser.add_argument(
        "--url", default="redis://127.0.0.1:6379/11", help="flushed before and after each run"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="run a failed run again this often (a shared Redis may drop connections)",
    )
    parser.add_argument(
        "--run-timeout", type=float, default=600.0, help="seconds for one harness run"
    )
    parser.add_argument(
        "--cache", type=Path, default=ROOT / ".cache" / "peers", help="where the peer venvs live"
    )
    parser.add_argument("--ours-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.only.split(",")) - set(names)
    if unknown:
        parser.error(f"unknown --only {','.join(sorted(unknown))}; known: {','.join(names)}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_with_retries(config: Config, python: Path, args: argparse.Namespace, n: int) -> dict:
    """One configuration's run in round n; a failed run is tried again up to --retries times."""
    load, t0, failures = os.getloadavg()[0], time.time(), []
    for _ in range(1 + args.retries):
        try:
            result = run_config(config, python, args)
        except RunFailed as exc:
            failures.append(str(exc))
            log(f"round {n} {config.name}: FAILED {str(exc).splitlines()[0]}")
            continue
        io = result.get("io", {}).get("tasks_per_s")
        call = result.get("call", {}).get("tasks_per_s")
        log(
            f"round {n} {config.name}: {result['noop']['tasks_per_s']:.0f} tasks/s, "
            f"p50 {result['latency']['p50_ms']:.2f} ms, I/O {report.fmt(io)} tasks/s, "
            f"one Redis call {report.fmt(call)} tasks/s ({time.time() - t0:.0f} s)"
        )
        break
    else:
        result = {"error": failures[-1]}
    return result | {"round": n, "loadavg_1m_before": load, "failed_attempts": failures}


def run_rounds(
    selected: list[Config], pythons: dict, setup_errors: dict, args
) -> tuple[dict, list, list]:
    """All rounds, interleaved; stops early (keeping what is done) on Ctrl-C."""
    rounds: dict[str, list[dict]] = {c.name: [] for c in selected}
    pings: list[dict] = []
    ours_pings: list[dict] = []
    try:
        harness.flush_db(args.url)
        for n in range(1, args.rounds + 1):
            for venv, kept in ((PING_VENV, pings), (None, ours_pings)):  # redis-py, valkey-py
                if venv in pythons:
                    try:
                        kept.append(run_ping(pythons[venv], args))
                    except RunFailed as exc:
                        log(f"round {n} redis ping ({venv or 'ours'}): FAILED "
                            f"{str(exc).splitlines()[0]}")
            for config in selected:
                if config.venv in setup_errors:
                    rounds[config.name].append({"error": setup_errors[config.venv], "round": n})
                else:
                    rounds[config.name].append(
                        run_with_retries(config, pythons[config.venv], args, n)
                    )
    except KeyboardInterrupt:
        log("interrupted: reporting the rounds done so far")
    finally:
        harness.flush_db(args.url)
    return rounds, pings, ours_pings


def _best_ping(pings: list[dict]) -> dict:
    """The best of the rounds for each floor on its own: PING p50/p99 from the round with
    the lowest PING p50, the queue round trip's from the round with the lowest queue p50
    (one round's PING may be its best while its queue round trip is not)."""
    if not pings:
        return {}
    best = dict(min(pings, key=lambda p: p["p50_ms"]))
    queued = [p for p in pings if p.get("queue_p50_ms") is not None]
    if queued:
        fastest = min(queued, key=lambda p: p["queue_p50_ms"])
        best.update(queue_p50_ms=fastest["queue_p50_ms"], queue_p99_ms=fastest["queue_p99_ms"])
    return best | {"rounds": pings}


def summarize(config: Config, rounds: list[dict], args, ours_io: dict | None) -> dict:
    """A configuration's entry in the JSON: its set-up, all rounds, the best figures."""
    entry = {
        "about": config.about,
        "worker_noop": config.worker_noop,
        "worker_io": config.worker_io,
        "venv": str(args.cache / config.venv) if config.venv else str(args.ours_python.parents[1]),
        "pins": VENVS.get(config.venv, []),
        "rounds": rounds,
    }
    best = report.best_of(rounds)
    if best:
        fallback_io = ours_io if not config.worker_io else None  # ours-async: same I/O worker
        entry.update(
            version=best["version"], best=best, figures=report.figures_of(best, fallback_io)
        )
    else:
        errors = [r["error"].splitlines()[0] for r in rounds if "error" in r]
        entry["error"] = errors[-1] if errors else "not run"
    return entry


def main() -> None:
    args = parse_args()
    selected = [c for c in CONFIGS if c.name in args.only.split(",")]
    pythons: dict[str | None, Path] = {None: args.ours_python}
    setup_errors: dict[str, str] = {}
    for venv in sorted({c.venv for c in selected if c.venv} | {PING_VENV}):
        try:
            pythons[venv] = peer_python(args.cache, venv)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            setup_errors[venv] = f"venv set-up failed: {exc}"
    started = time.time()
    rounds, pings, ours_pings = run_rounds(selected, pythons, setup_errors, args)
    results: dict[str, dict] = {}
    for config in selected:
        ours_io = results.get("ours", {}).get("best", {}).get("io")
        results[config.name] = summarize(config, rounds[config.name], args, ours_io)
    full = {
        "meta": {
            "tasks": args.tasks,
            "io_tasks": args.io_tasks,
            "latency_samples": args.latency_samples,
            "call_tasks": args.call_tasks,
            "ping_samples": args.ping_samples,
            "rounds": args.rounds,
            "url": args.url,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": started,
            "seconds": time.time() - started,
            "command": shlex.join(sys.argv),
        },
        "redis_ping": _best_ping(pings),
        "redis_ping_ours": _best_ping(ours_pings),  # the same floors with our client library
        "results": results,
        "ratios": {
            base: report.ratios(results, base)
            for base in ("ours", "ours-pipelined", "ours-processes", "ours-async", "ours-inline")
            if base in results
        },
    }
    print(report.markdown(full))
    if args.json:
        args.json.write_text(json.dumps(full, indent=2) + "\n")


if __name__ == "__main__":
    main()
