"""Peer comparison: celery-asyncio against upstream Celery, dramatiq, taskiq and arq, one run.

    .venv/bin/python bench/peers.py --rounds 3 --json peers.json
    .venv/bin/python bench/peers.py --quick --rounds 1            # smoke test, small counts
    .venv/bin/python bench/peers.py --only ours,taskiq --tasks 5000

Every configuration runs the same workloads end to end (bench/peers/harness.py), each burst
sent by one producer thread with one framework call per task (``delay()``, ``send()``,
``kiq()``, ``enqueue_job()``), then every result awaited in send order; tasks/s from the
first send to the last result:

* realistic bursts: one Redis call per task (an INCR, ``--call-tasks``), a 1 KB and a 100 KB
  string argument, tasks sent with options (countdown 0, a route, a priority: the general send
  path), and a CPU-plus-I/O mix (0.2 ms of pure-Python work, then one INCR); ``--kind-tasks``
  each (a fifth of it for 100 KB); a peer whose harness module cannot send a kind shows "—";
* the empty task (``--tasks``) and ``--latency-samples`` sequential send-and-wait round trips,
  p50/p99, next to the floors (bench/peers/redis_ping.py: sequential PINGs, and a bare queue
  round trip through a second process), with redis-py and with our client library, valkey-py;
* 10 ms of I/O per task (``--io-tasks``: ``await asyncio.sleep`` where the framework runs
  coroutines, ``time.sleep`` on threads otherwise), in a second worker session.

Whole costs: each burst reports CPU per task of the worker (its whole process tree, prefork
children included), of the producer, and of the Redis server (``INFO cpu``: our Lua scripts
run there), and their sum.

Like for like. Every peer venv has hiredis (redis-py parses replies with it), and uvloop
where the framework runs an event loop (taskiq uses it by itself; arq and dramatiq's AsyncIO
middleware through the event loop policy their harness module sets); ``ours-pure`` is ours
without libvalkey, hiredis and uvloop (bench/peers/pure/sitecustomize.py). Upstream Celery is
tuned as its docs advise for many short tasks (CELERY_TUNING: no gossip, mingle or heartbeat,
``-O fair``, a prefetch multiplier) at the machine's core count and at a high concurrency,
threads and prefork. dramatiq runs plain actors on threads, and ``dramatiq-async`` runs the
I/O, one-call and mix actors as ``async def`` (dramatiq 2's AsyncIO middleware). arq's worker
polls its queue as often as its client polls for results (1 ms). ``ours`` publishes as every
peer does, waiting for Redis's reply (the default); ``ours-pipelined`` returns from
``delay()`` before Redis replied (``publish_pipeline``), a weaker guarantee.

Redis: by default a private ``redis-server`` on a free loopback port (``--redis-server``),
started for the run and stopped after, so that its CPU figures count only this benchmark and
no other test suite on the machine touches its connections; ``--url`` uses a running server
instead (database 11 by default; flushed before and after every run; its CPU figures then
include whatever else it serves).

Each peer is installed into its own throwaway venv under ``.cache/peers/<name>`` (made on
first use, pinned versions below; never one of our dependencies). Ours runs from
``--ours-python`` (``.venv``). A run is one process, bench/peers/harness.py, in that venv: it
starts the worker, drives it with the peer's producer (bench/peers/<peer>_peer.py) and prints
JSON. Runs are interleaved round by round (ours, ours-pipelined, ..., arq, then again) so that
all see the same machine load; every figure is the median of the rounds with its minimum and
maximum (bench/peers/report.py). Every run is bounded by ``--run-timeout``; on a timeout, an
error or Ctrl-C its whole process tree is stopped. A failed run is tried again
(``--retries``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
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

#: The peer venvs and the versions they were tested with (latest releases at the time), with
#: the C speed-ups each supports: hiredis for redis-py, uvloop where an event loop runs.
HIREDIS, UVLOOP = "hiredis==3.5.0", "uvloop==0.23.0"
VENVS = {
    "celery": ["celery[redis]==5.7.0", HIREDIS],
    "dramatiq": ["dramatiq[redis]==2.2.1", HIREDIS, UVLOOP],
    "dramatiq-amqp": ["dramatiq[rabbitmq,redis]==2.2.1"],  # bench/rabbitmq.py: pika as well
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4", HIREDIS, UVLOOP],
    "arq": ["arq==0.28.0", HIREDIS, UVLOOP],
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


OURS = "--loop-workers 1 --loop-concurrency 100 --sync-workers"
ARQ = "--max-jobs 100 --poll-delay 0.001"
TASKIQ = "--workers 2 --max-async-tasks 100"
PIPELINED = json.dumps({"publish_pipeline": True})
#: Upstream Celery's throughput advice (docs: "Optimizing"; workers guide).
CELERY_TUNING = "--without-gossip --without-mingle --without-heartbeat -O fair"
CPUS = os.cpu_count() or 2


def _celery(pool: str, concurrency: int, prefetch: int) -> Config:
    options = f"-P {pool} -c {concurrency} --prefetch-multiplier {prefetch} {CELERY_TUNING}"
    return Config(
        name=f"celery-{pool}-{concurrency}",
        venv="celery",
        module="celery_peer",
        worker_noop=options,
        worker_io=options,
        about=f"{pool} pool c={concurrency}, prefetch multiplier {prefetch}, without gossip, "
        "mingle, heartbeat, -O fair; `def` tasks (I/O: `time.sleep`)",
    )


CONFIGS = [
    Config(
        name="ours",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 4",
        worker_io=f"{OURS} 1",
        about="`def` tasks: 1 loop + 4 sync workers; I/O `async def`: 1 loop worker x 100; "
        "confirmed publish (the default)",
    ),
    Config(
        name="ours-pipelined",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 4",
        worker_io=f"{OURS} 1",
        about="as ours; the producer publishes pipelined (returns before Redis replied)",
        env={"BENCH_TRANSPORT_OPTIONS": PIPELINED},
    ),
    Config(
        name="ours-pure",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 4",
        worker_io=f"{OURS} 1",
        about="as ours, without libvalkey, hiredis and uvloop (producer and worker)",
        env={"PYTHONPATH": str(PEERS_DIR / "pure")},
    ),
    Config(
        name="ours-processes",
        venv=None,
        module="celery_peer",
        worker_noop=f"{OURS} 4 --processes 2",
        worker_io=f"{OURS} 1 --processes 2",
        about="as ours, in 2 worker processes (--processes 2)",
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
    _celery("threads", CPUS, 64),
    _celery("threads", 64, 4),
    _celery("prefork", CPUS, 64),
    _celery("prefork", 16, 4),
    Config(
        name="dramatiq",
        venv="dramatiq",
        module="dramatiq_peer",
        worker_noop="--processes 2 --threads 8",
        worker_io="--processes 2 --threads 50",
        about="2 processes x 8 threads (I/O: x 50), `def` actors (I/O `time.sleep`); Results "
        "middleware, Redis backend",
    ),
    Config(
        name="dramatiq-async",
        venv="dramatiq",
        module="dramatiq_peer",
        worker_noop="--processes 2 --threads 8",
        worker_io="--processes 2 --threads 50",
        about="as dramatiq; the I/O, one-call and mix actors `async def` (AsyncIO middleware, "
        "uvloop)",
        env={"BENCH_DRAMATIQ_ASYNC": "1"},
    ),
    Config(
        name="taskiq",
        venv="taskiq",
        module="taskiq_peer",
        worker_noop=TASKIQ,
        worker_io=TASKIQ,
        about="RedisStreamBroker + RedisAsyncResultBackend, --workers 2 --max-async-tasks 100, "
        "uvloop; client polls results every 1 ms",
    ),
    Config(
        name="arq",
        venv="arq",
        module="arq_peer",
        worker_noop=ARQ,
        worker_io=ARQ,
        about="max_jobs=100, worker polls every 1 ms, uvloop; client polls results every 1 ms",
    ),
]
#: What a run selects without --only: the rows of the README's table.
DEFAULT_ONLY = [c.name for c in CONFIGS if c.name not in ("ours-async", "ours-inline")]
KINDS = "kb1,kb100,options,mix"
QUICK = {"tasks": 300, "io_tasks": 200, "latency_samples": 50, "ping_samples": 300,
         "call_tasks": 300, "kind_tasks": 300}
FULL = {"tasks": 3000, "io_tasks": 2000, "latency_samples": 300, "ping_samples": 2000,
        "call_tasks": 3000, "kind_tasks": 3000}


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
        "--call-tasks": args.call_tasks,
        "--kinds": args.kinds,
        "--kind-tasks": args.kind_tasks,
        "--worker-noop": config.worker_noop,
        "--worker-io": config.worker_io,
    }
    cmd = [str(python), str(PEERS_DIR / "harness.py"), config.module, *_flags(options)]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # only a configuration's own (ours-pure) reaches the run
    env.update(config.env)
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
    parser.add_argument(
        "--kind-tasks", type=int,
        help=f"tasks per burst of each --kinds kind (default {FULL['kind_tasks']})"
    )
    parser.add_argument(
        "--kinds", default=KINDS, help=f"comma separated, from {KINDS} (default all; '' none)"
    )
    parser.add_argument("--ping-samples", type=int, help=f"default {FULL['ping_samples']}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default=",".join(DEFAULT_ONLY), help=f"comma separated, from: {','.join(names)}"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"small counts for a smoke test: {QUICK}"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write all figures here")
    parser.add_argument(
        "--url", help="a running Redis to use (flushed before and after each run) instead of a "
        "private redis-server"
    )
    parser.add_argument(
        "--redis-server", default="redis-server", help="the binary of the private server"
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
    bad = set(filter(None, args.kinds.split(","))) - set(KINDS.split(","))
    if bad:
        parser.error(f"unknown --kinds {','.join(sorted(bad))}; known: {KINDS}")
    if args.url is None and shutil.which(args.redis_server) is None:
        parser.error(f"{args.redis_server} not found: install Redis or give --url")
    return args


class PrivateRedis:
    """A ``redis-server`` on a free loopback port, no persistence, for one benchmark run."""

    def __init__(self, binary: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                harness.flush_db(self.url)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{binary} did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


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
        rates = ", ".join(
            f"{w} {result[w]['tasks_per_s']:.0f}" for w, _ in report.WORKLOADS if w in result
        )
        log(
            f"round {n} {config.name}: tasks/s {rates}; p50 {result['latency']['p50_ms']:.2f} ms "
            f"({time.time() - t0:.0f} s)"
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


def _median_ping(pings: list[dict]) -> dict:
    """Each floor's median over the rounds (PING and the queue round trip on their own)."""
    if not pings:
        return {}
    figures = {}
    for key in ("p50_ms", "p99_ms", "queue_p50_ms", "queue_p99_ms"):
        values = [p[key] for p in pings if p.get(key) is not None]
        if values:
            figures[key] = statistics.median(values)
    return {"client": pings[0].get("client")} | figures | {"rounds": pings}


def summarize(config: Config, rounds: list[dict], args) -> dict:
    """A configuration's entry in the JSON: its set-up, all rounds, medians and spread."""
    entry = {
        "about": config.about,
        "worker_noop": config.worker_noop,
        "worker_io": config.worker_io,
        "venv": str(args.cache / config.venv) if config.venv else str(args.ours_python.parents[1]),
        "pins": VENVS.get(config.venv, []),
        "rounds": rounds,
    }
    summary = report.summarize(rounds)
    if summary:
        entry.update(version=summary["version"], summary=summary, median=report.medians(summary))
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
    server = None if args.url else PrivateRedis(args.redis_server)
    if server is not None:
        args.url = server.url
    started = time.time()
    try:
        rounds, pings, ours_pings = run_rounds(selected, pythons, setup_errors, args)
    finally:
        if server is not None:
            server.stop()
    results = {c.name: summarize(c, rounds[c.name], args) for c in selected}
    full = {
        "meta": {
            "tasks": args.tasks,
            "io_tasks": args.io_tasks,
            "latency_samples": args.latency_samples,
            "call_tasks": args.call_tasks,
            "kinds": args.kinds,
            "kind_tasks": args.kind_tasks,
            "ping_samples": args.ping_samples,
            "rounds": args.rounds,
            "url": args.url,
            "redis": "a private redis-server (started for this run)" if server else args.url,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": started,
            "seconds": time.time() - started,
            "command": shlex.join(sys.argv),
        },
        "redis_ping": _median_ping(pings),
        "redis_ping_ours": _median_ping(ours_pings),  # the same floors with our client library
        "results": results,
        "ratios": {
            base: report.ratios(results, base)
            for base in ("ours", "ours-pipelined", "ours-pure", "ours-processes", "ours-async",
                         "ours-inline")
            if base in results
        },
    }
    print(report.markdown(full))
    if args.json:
        args.json.write_text(json.dumps(full, indent=2) + "\n")


if __name__ == "__main__":
    main()
