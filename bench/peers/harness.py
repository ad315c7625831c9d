"""One end-to-end benchmark run of one task framework: start its worker, drive it, print JSON.

Runs inside the framework's own venv (standard library only here), started by bench/peers.py:

    python harness.py PEER_MODULE --url redis://127.0.0.1:6379/11 --tasks 10000 \
        --io-tasks 2000 --latency-samples 500 --worker-noop "ARGS" --worker-io "ARGS"

PEER_MODULE (celery_peer, dramatiq_peer, taskiq_peer, arq_peer; next to this file) is the
framework's app (the tasks the worker imports) plus a small producer. It provides:

* ``version() -> str``
* ``worker_command(python, args) -> (argv, extra_env)``: the worker process to start;
* ``Producer(url)`` with ``start()``, ``close()``, ``burst(kind, n)`` (send n tasks of kind
  "noop", "sleep" or "call", one framework call each, then wait for every result; return the
  ``time.perf_counter()`` at which the last send returned) and ``round_trips(kind, n)``
  (n sequential send-and-wait; return the n durations in seconds). Each of these may be a
  plain function or a coroutine function; coroutines all run on one event loop, so a
  producer's client keeps its connections across calls.
* ``KINDS`` (optional): the workload kinds its producer can send; a kind asked for but not in
  it is skipped and listed under "unsupported" in the JSON (no figure, never a made-up one).

Two worker sessions, each a fresh worker process on a flushed database:

1. the no-op worker (``--worker-noop``): warm-up, then the burst of ``--tasks`` no-op tasks
   (tasks/s from first send to last result) and ``--latency-samples`` sequential round trips
   (p50/p99); then, with ``--call-tasks``, a warm-up and a burst of tasks of kind "call",
   whose body makes one Redis call (an INCR with the process's blocking client); then, for
   each of ``--kinds`` (kb1, kb100: a 1 KB or 100 KB string argument; options: sent with a
   countdown of 0, a route and a priority; mix: 0.2 ms of CPU work then one Redis call), a
   warm-up and a burst of ``--kind-tasks`` tasks (a fifth of that for kb100);
2. the I/O worker (``--worker-io``): warm-up, then the burst of ``--io-tasks`` tasks that
   each sleep 10 ms (``await asyncio.sleep`` or ``time.sleep``, as the framework runs them).

Worker CPU time is user+system time of the worker process and all its descendants (including
children they reaped), read from /proc before and after each measured phase. Next to it each
burst reports the producer's CPU (this process: user+system from getrusage; the producer is
the only thing it runs during a burst) and Redis's (``used_cpu_user+used_cpu_sys`` of
``INFO cpu``, all of the server: a private server, as bench/peers.py starts, counts only this
run), each per task, and their sum: a framework that moves work into Redis's Lua scripts or
into the producer shows it there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP_TASKS = 200
FAILED_MARK = "harness failed: "  #: starts the one-line reason on stderr, for bench/peers.py


# --- Redis without a client library (the harness runs in every venv) -----------------------


def _db(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "0"


def flush_db(url: str) -> None:
    """FLUSHDB on the database in ``url`` only (never FLUSHALL: the server is shared)."""
    parts, db = urlsplit(url), _db(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 10) as sock:
        sock.sendall(
            f"*2\r\n$6\r\nSELECT\r\n${len(db)}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n".encode()
        )
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    if reply != b"+OK\r\n+OK\r\n":
        raise RuntimeError(f"FLUSHDB on {url} answered {reply!r}")


def _command(url: str, *words: str) -> bytes:
    """One Redis command on a fresh connection (after SELECT); the raw reply to it."""
    parts, db = urlsplit(url), _db(url)
    request = b"".join(
        f"*{len(cmd)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in cmd)
        for cmd in (("SELECT", db), words)
    )
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 10) as sock:
        sock.sendall(request)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
            head, _, rest = reply.partition(b"\r\n")  # +OK of SELECT
            if head != b"+OK":
                raise RuntimeError(f"SELECT on {url} answered {reply[:80]!r}")
            if rest.startswith(b"$"):
                size_line, _, body = rest.partition(b"\r\n")
                if len(body) >= int(size_line[1:]) + 2:
                    return body[: int(size_line[1:])]
            elif rest.endswith(b"\r\n"):
                return rest
    raise RuntimeError(f"{words[0]} on {url}: connection closed before the reply")


def redis_cpu_seconds(url: str) -> float:
    """The Redis server's own CPU time so far: used_cpu_user + used_cpu_sys of INFO cpu."""
    info = dict(
        line.split(":", 1) for line in _command(url, "INFO", "cpu").decode().splitlines()
        if ":" in line
    )
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def producer_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the worker process tree ---------------------------------------------------------------


# Indexes into _stat(): proc(5) field number minus 3.
STATE, PPID, PGRP, SESSION, UTIME, STIME, CUTIME, CSTIME, STARTTIME = 0, 1, 2, 3, 11, 12, 13, 14, 19


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def process_tree(root: int) -> dict[int, list[str]]:
    """The stat fields of ``root`` and all its live descendants, by pid."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                stats[int(entry)] = fields
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[PPID]), []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid]
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime summed over ``root``'s live process tree: a prefork pool's
    children count, and so do children they reaped."""
    ticks = sum(
        int(f[UTIME]) + int(f[STIME]) + int(f[CUTIME]) + int(f[CSTIME])
        for f in process_tree(root).values()
    )
    return ticks / CLOCK_TICKS


class WorkerDied(RuntimeError):
    """The worker process exited while the producer was still waiting on it."""


def _raise_worker_died(*_: object) -> None:
    raise WorkerDied("the worker process exited during the run (see its log)")


class Worker:
    """A framework's worker process, started on enter and stopped (with its tree) on exit.

    A watchdog thread interrupts the main thread (SIGUSR1 -> WorkerDied) if the worker exits
    before ``stop()``, so a producer blocked on a result does not wait out its timeout.
    """

    def __init__(self, argv: list[str], extra_env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        # A PYTHONPATH set by the caller (bench/rabbitmq.py: this checkout's src) stays after
        # the peer modules' directory.
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        self.env = dict(os.environ, PYTHONPATH=path, C_FORCE_ROOT="1", **extra_env)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()

    def __enter__(self) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=HERE,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        signal.signal(signal.SIGUSR1, _raise_worker_died)
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()
        return self

    def _watch(self, proc: subprocess.Popen) -> None:
        while not self.stopping.wait(0.5):
            if proc.poll() is not None:
                if not self.stopping.is_set():
                    os.kill(os.getpid(), signal.SIGUSR1)
                return

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """utime+stime+cutime+cstime summed over the worker's live process tree."""
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (the frameworks' warm shutdown), then SIGKILL whatever of the tree is left."""
        self.stopping.set()
        if self.proc is None:
            return
        tree = {pid: fields[STARTTIME] for pid, fields in process_tree(self.proc.pid).items()}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        for pid, started in tree.items():  # children may have been re-parented by now
            fields = _stat(pid)
            if fields is not None and fields[STARTTIME] == started and fields[STATE] != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        self.proc = None


# --- the measurements ----------------------------------------------------------------------


class Runner:
    """Calls producer methods, sync or async; coroutines share one event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __call__(self, method, *args):
        value = method(*args)
        if inspect.isawaitable(value):
            value = self.loop.run_until_complete(value)
        return value

    def close(self) -> None:
        self.loop.close()


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def measure_burst(run: Runner, producer, worker: Worker, kind: str, n: int, url: str) -> dict:
    """tasks/s from the first send to the last result; worker, producer and Redis CPU per task."""
    redis0, prod0 = redis_cpu_seconds(url), producer_cpu_seconds()
    cpu0, t0 = worker.cpu_seconds(), time.perf_counter()
    t_sent = run(producer.burst, kind, n)
    t1, cpu1 = time.perf_counter(), worker.cpu_seconds()
    prod1, redis1 = producer_cpu_seconds(), redis_cpu_seconds(url)
    costs = {
        "worker_cpu_us_per_task": (cpu1 - cpu0) / n * 1e6,
        "producer_cpu_us_per_task": (prod1 - prod0) / n * 1e6,
        "redis_cpu_us_per_task": (redis1 - redis0) / n * 1e6,
    }
    return {
        "tasks": n,
        "seconds": t1 - t0,
        "tasks_per_s": n / (t1 - t0),
        "publish_per_s": n / (t_sent - t0),
        **costs,
        "total_cpu_us_per_task": sum(costs.values()),
    }


def measure_latency(run: Runner, producer, worker: Worker, n: int) -> dict:
    """Sequential no-op round trips: p50/p99, and worker CPU per task while doing them."""
    cpu0 = worker.cpu_seconds()
    samples = sorted(run(producer.round_trips, "noop", n))
    cpu1 = worker.cpu_seconds()
    return {
        "samples": n,
        "p50_ms": percentile(samples, 0.50) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "mean_ms": sum(samples) / n * 1e3,
        "worker_cpu_us_per_task": (cpu1 - cpu0) / n * 1e6,
    }


@contextlib.contextmanager
def worker_session(peer, args, run: Runner, which: str):
    """A flushed database, a started producer and a running worker; both stopped on exit.

    On an error the end of the worker's log goes to stderr, for bench/peers.py to show.
    """
    argv, extra_env = peer.worker_command(
        sys.executable, shlex.split(getattr(args, f"worker_{which}"))
    )
    flush_db(args.url)
    producer = peer.Producer(args.url)
    run(producer.start)
    worker = Worker(argv, extra_env, args.log_dir / f"{args.label}-db{_db(args.url)}-{which}.log")
    try:
        with worker:
            yield producer, worker
    except BaseException:
        print(f"--- {worker.log_path} (end) ---\n{worker.log_tail()}", file=sys.stderr, flush=True)
        raise
    finally:
        run(producer.close)


def warm_up(run: Runner, producer, kind: str, n: int = WARM_UP_TASKS) -> None:
    """One round trip (it also waits for the worker to start), then ``n`` more."""
    run(producer.round_trips, kind, 1)
    run(producer.round_trips, kind, n)


#: The kinds ``--kinds`` may name, and the share of ``--kind-tasks`` each burst sends.
EXTRA_KINDS = {"kb1": 1.0, "kb100": 0.2, "options": 1.0, "mix": 1.0}


def measure(peer, args) -> dict:
    """Both worker sessions; the figures as one dict."""
    run = Runner()
    figures: dict = {
        "impl": args.label,
        "version": peer.version(),
        "worker_noop": args.worker_noop,
        "worker_io": args.worker_io,
    }
    supported = getattr(peer, "KINDS", None)
    wanted = [k for k in args.kinds if args.kind_tasks > 0]
    if args.call_tasks > 0:
        wanted.insert(0, "call")
    kinds = [k for k in wanted if supported is None or k in supported]
    figures["unsupported"] = [k for k in wanted if k not in kinds]
    try:
        with worker_session(peer, args, run, "noop") as (producer, worker):
            warm_up(run, producer, "noop")
            figures["noop"] = measure_burst(run, producer, worker, "noop", args.tasks, args.url)
            figures["latency"] = measure_latency(run, producer, worker, args.latency_samples)
            for kind in kinds:
                n = args.call_tasks if kind == "call" else int(args.kind_tasks * EXTRA_KINDS[kind])
                warm_up(run, producer, kind, WARM_UP_TASKS // 4)
                figures[kind] = measure_burst(run, producer, worker, kind, max(1, n), args.url)
        if args.io_tasks > 0:
            with worker_session(peer, args, run, "io") as (producer, worker):
                warm_up(run, producer, "sleep")
                figures["io"] = measure_burst(run, producer, worker, "sleep", args.io_tasks,
                                              args.url)
    finally:
        run.close()
        flush_db(args.url)
    return figures


def _kinds(value: str) -> list[str]:
    kinds = [k for k in value.split(",") if k]
    unknown = sorted(set(kinds) - set(EXTRA_KINDS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown kind {','.join(unknown)}; known: {','.join(EXTRA_KINDS)}"
        )
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("peer", help="module next to this file, e.g. dramatiq_peer")
    parser.add_argument("--label", default=None, help="name used in logs and the JSON")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--io-tasks", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--call-tasks", type=int, default=0,
                        help="tasks that make one Redis call each, on the no-op worker")
    parser.add_argument(
        "--kinds", default="", type=_kinds,
        help=f"comma separated, more bursts on the no-op worker: {','.join(EXTRA_KINDS)}"
    )
    parser.add_argument("--kind-tasks", type=int, default=0, help="tasks per --kinds burst")
    parser.add_argument("--worker-noop", default="", help="worker options for the no-op session")
    parser.add_argument("--worker-io", default="", help="worker options for the I/O session")
    parser.add_argument(
        "--log-dir", type=Path, default=HERE.parents[1] / ".cache" / "peers" / "logs"
    )
    args = parser.parse_args()
    args.label = args.label or args.peer
    # bench/peers.py stops a run with SIGTERM: unwind so the worker is stopped in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(HERE))
    os.environ["BENCH_URL"] = args.url  # read by the peer modules (here and in the worker)
    peer = importlib.import_module(args.peer)
    try:
        figures = measure(peer, args)
    except Exception as exc:
        traceback.print_exc()
        print(
            f"{FAILED_MARK}{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr, flush=True
        )
        sys.exit(1)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
