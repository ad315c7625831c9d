"""``celery bench``: a synthetic workload against the app's own broker and result backend.

How the worker finds the bench tasks: importing this module (``celery.bin.celery`` does)
registers ``celery.bench.io`` and ``celery.bench.cpu`` on every app of the process through
``connect_on_app_finalize``, as Celery registers its built-in ``celery.*`` tasks. The worker
this command starts, ``python -m celery -A <app> worker``, imports this module before it
loads the app, so it has them; so does any ``celery worker`` (``--external-worker``).

Threads: here the whole run (producer, progress bar, supervision) is one event loop on the
main thread, so ``_Run``'s state needs no lock. In the worker the bench tasks run on many
threads at once; their completion files are guarded by ``_completions_lock``. A memory://
broker cannot cross processes: there the worker runs on a thread of this process, reached
only through ``Worker.stop()`` (thread-safe) and a ``threading.Event``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from .. import _state, states
from ..exceptions import CeleryError
from ..utils.text import mask_url, pluralize
from .base import CLIContext, user_error
from .purge import known_queues

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..result import AsyncResult

__all__ = ["CPU_TASK", "IO_TASK", "bench", "register_bench_tasks"]

#: The ``async def`` bench task: awaits ``asyncio.sleep(io_ms)`` on a loop worker.
IO_TASK = "celery.bench.io"
#: The ``def`` bench task: burns ``cpu_ms`` of CPU time on a sync worker.
CPU_TASK = "celery.bench.cpu"
#: One completion record (``--no-results``): task index, ``time.time()`` when it ended.
RECORD = struct.Struct("<qd")
#: Seconds a worker gets to finish after SIGTERM before it is killed.
STOP_GRACE = 10.0
#: Seconds the sends and result waits get to end once cancelled (Ctrl-C, SIGTERM, a failed
#: check) before the clean-up goes ahead without them.
CANCEL_GRACE = 10.0

# -- the bench tasks (they run in the worker) -----------------------------------------------

# Guards _completion_fds and the writes, so no fd is closed while a thread writes to it.
# The kernel keeps each 16-byte O_APPEND write whole, also across worker processes.
_completions_lock = threading.Lock()
_completion_fds: dict[str, int] = {}


def _record_completion(path: str, index: int) -> None:
    """Append ``(index, now)`` to the run's completion file; any worker thread."""
    record = RECORD.pack(index, time.time())
    with _completions_lock:
        try:
            fd = _completion_fds.get(path)
            if fd is None:
                if len(_completion_fds) >= 8:  # one per bench run served: close the oldest
                    os.close(_completion_fds.pop(next(iter(_completion_fds))))
                fd = _completion_fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, record)
        except OSError:
            pass  # that bench run is over (its file is gone): nobody counts any more


def _burn(ms: float) -> None:
    """Burn ``ms`` milliseconds of this thread's CPU time in Python bytecode."""
    if ms > 0:
        end, x = time.thread_time() + ms / 1000, 1
        while time.thread_time() < end:
            for _ in range(100):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF


async def bench_io(index: int, payload: str, io_ms: float, completions: str | None,
                   cpu_ms: float = 0.0) -> int:
    """Wait ``io_ms`` milliseconds on the event loop, as an I/O call would; with ``cpu_ms``,
    burn half of it before the wait and half after (a handler that parses, calls out, and
    builds its answer)."""
    _burn(cpu_ms / 2)
    if io_ms > 0:
        await asyncio.sleep(io_ms / 1000)
    _burn(cpu_ms / 2)
    if completions:
        _record_completion(completions, index)
    return index


def bench_cpu(index: int, payload: str, cpu_ms: float, completions: str | None) -> int:
    """Burn ``cpu_ms`` milliseconds of this thread's CPU time."""
    _burn(cpu_ms)
    if completions:
        _record_completion(completions, index)
    return index


def register_bench_tasks(app: Celery) -> None:
    """Register the bench tasks on ``app`` (idempotent)."""
    app.task(name=IO_TASK, ignore_result=False)(bench_io)
    app.task(name=CPU_TASK, ignore_result=False)(bench_cpu)


_state.connect_on_app_finalize(register_bench_tasks)

# -- what to run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One bench run, as the options and the app's settings make it."""

    tasks: int
    io_ms: float
    cpu_ms: float
    #: CPU milliseconds each async task burns, half before its await and half after.
    async_cpu_ms: float
    mix: float
    payload_bytes: int
    in_flight: int
    queue: str
    timeout: float
    #: Await each result; else the tasks append to a completion file the bench reads.
    results: bool
    #: "process" (a child ``celery worker``), "thread" (memory:// only) or "external".
    worker_mode: str
    #: The worker sends task events (``-E``); external workers: as they were started.
    task_events: bool = False
    #: The worker's sizes (None for external workers: unknown).
    loop_workers: int | None = None
    loop_concurrency: int | None = None
    sync_workers: int | None = None
    prefetch_multiplier: int | None = None
    #: More ``celery worker`` arguments for the worker the bench starts (``--worker-arg``).
    worker_args: tuple[str, ...] = ()

    @property
    def async_tasks(self) -> int:
        return math.floor(self.tasks * self.mix)

    def is_async(self, index: int) -> bool:
        """Spreads the async tasks evenly: exactly ``async_tasks`` of them in all."""
        return math.floor((index + 1) * self.mix) > math.floor(index * self.mix)


def _worker_sizes(conf: Any, opts: dict[str, Any]) -> dict[str, int]:
    """Option, else setting, else the default ``celery worker`` would use."""
    choices = {
        "loop_workers": (conf.worker_loop_workers, 1),
        "loop_concurrency": (conf.worker_loop_concurrency, 100),
        "sync_workers": (conf.worker_sync_workers or conf.worker_concurrency, os.cpu_count() or 1),
        "prefetch_multiplier": (conf.worker_prefetch_multiplier, 4),
    }
    return {
        name: int(next(v for v in (opts[name], *values) if v is not None))
        for name, values in choices.items()
    }


def make_plan(obj: CLIContext, app: Celery, opts: dict[str, Any]) -> tuple[Plan, list[str]]:
    """Check the options against the app; the plan, and notes on what will be measured."""
    conf, notes = app.conf, []
    if conf.task_always_eager:
        raise user_error("task_always_eager is set: tasks would run in this process; unset it")
    queue = opts["queue"] or f"celery-bench-{os.getpid()}"
    if queue in known_queues(conf):
        raise user_error(f"--queue {queue}: that is one of the app's task queues, and the bench "
                         "queue is purged at the end; use a queue of its own")
    _ = (app.transport, app.backend)  # a bad URL fails here, before any output
    memory_broker = urlsplit(app.broker_url).scheme == "memory"
    if opts["worker_args"] and (opts["external_worker"] or memory_broker):
        raise user_error("--worker-arg: only for the worker process the bench starts (not "
                         "with --external-worker or a memory:// broker)")
    if opts["external_worker"]:
        if memory_broker:
            raise user_error("--external-worker: a memory:// broker is private to this process")
        if not opts["queue"]:
            raise user_error("--external-worker needs --queue, the queue those workers consume")
        if opts["task_events"]:
            raise user_error("--task-events starts the bench's worker with -E: external "
                             "workers keep the options they were started with")
        mode = "external"
    elif memory_broker:
        mode = "thread"
    else:
        mode = "process"
        if not obj.app_spec and not obj._owns_app:
            raise user_error("celery bench starts its worker with -A: give -A/--app")
    results = not opts["no_results"]
    if results and not conf.result_backend:
        results = False
        notes.append("no result backend is configured: completions are counted instead")
    elif results and urlsplit(conf.result_backend).scheme == "cache+memory" and mode != "thread":
        results = False
        notes.append("cache+memory:// results stay in the worker: completions are counted instead")
    plan = Plan(
        tasks=opts["tasks"], io_ms=opts["io_ms"], cpu_ms=opts["cpu_ms"],
        async_cpu_ms=opts["async_cpu_ms"], mix=opts["mix"],
        payload_bytes=opts["payload_bytes"], in_flight=opts["in_flight"], queue=queue,
        timeout=opts["timeout"], results=results, worker_mode=mode,
        task_events=opts["task_events"],
        worker_args=tuple(opts["worker_args"]),
        **({} if mode == "external" else _worker_sizes(conf, opts)),
    )
    unused = [name for name, value, applies in (
        ("--io-ms", opts["io_ms"], plan.async_tasks),
        ("--async-cpu-ms", opts["async_cpu_ms"], plan.async_tasks),
        ("--cpu-ms", opts["cpu_ms"], plan.tasks - plan.async_tasks)) if value and not applies]
    if unused:
        kind = "sync" if "--cpu-ms" in unused else "async"
        notes.append(f"{' and '.join(unused)} unused: --mix {plan.mix:g} sends no {kind} tasks")
    if mode != "external" and plan.async_tasks and not plan.loop_workers:
        raise click.UsageError("--mix sends async tasks but --loop-workers is 0")
    if mode != "external" and plan.tasks > plan.async_tasks and not plan.sync_workers:
        raise click.UsageError("--mix sends sync tasks but --sync-workers is 0")
    return plan, notes


# -- the worker -----------------------------------------------------------------------------


class _Workers:
    """Workers the bench does not manage (``--external-worker``): every method a no-op.
    Subclasses implement ``start`` (returns at once), ``check`` (a one-line error if the
    worker has stopped), ``last_words`` (its last log line), ``cpu_seconds`` (CPU used so
    far, if measurable), ``alive``, ``ask_to_stop`` and ``kill`` (the last resort on every
    way out). Used from the producer's thread only."""

    mode = "external"
    pid: int | None = None

    def start(self) -> None: ...

    def check(self) -> None: ...

    def last_words(self) -> str:
        return ""

    def cpu_seconds(self) -> float | None:
        return None

    def alive(self) -> bool:
        return False

    def ask_to_stop(self) -> None: ...

    def kill(self) -> None: ...

    async def stop(self) -> None:
        """Ask the worker to stop (a warm shutdown); ``kill`` it after STOP_GRACE seconds."""
        self.ask_to_stop()
        deadline = time.monotonic() + STOP_GRACE
        while self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.kill()


class _ChildWorker(_Workers):
    """The worker as a child process, ``python -m celery -A <app> worker -Q <queue>``. It
    gets the broker and backend URLs this process resolved through ``BROKER_URL`` and
    ``RESULT_BACKEND`` (argv would show passwords in ``ps``), the same working directory
    (relative SQLite paths) and its own session (Ctrl-C in the terminal reaches only the
    bench, which then stops the worker); it logs to a file in the run's scratch directory."""

    mode = "process"
    proc: subprocess.Popen[bytes] | None = None

    def __init__(self, obj: CLIContext, app: Celery, plan: Plan, scratch: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("APP", "RESULT_BACKEND")}
        env["BROKER_URL"] = app.broker_url
        if app.conf.result_backend:
            env["RESULT_BACKEND"] = str(app.conf.result_backend)
        if obj.config:
            env["CONFIG_MODULE"] = obj.config
        self.env, self.argv = env, [
            sys.executable, "-m", "celery", "-q", *(["-A", obj.app_spec] if obj.app_spec else []),
            "worker", "-Q", plan.queue, "-n", f"bench{os.getpid()}@%h", "-l", "WARNING",
            f"--loop-workers={plan.loop_workers}", f"--loop-concurrency={plan.loop_concurrency}",
            f"--sync-workers={plan.sync_workers}",
            f"--prefetch-multiplier={plan.prefetch_multiplier}", *plan.worker_args,
            *(["-E"] if plan.task_events else []),
        ]
        self.log_path = scratch / "worker.log"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, start_new_session=True,
            )
        self.pid = self.proc.pid

    def check(self) -> None:
        if self.proc is None or (code := self.proc.poll()) is None:
            return
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited ({code})"
        words = self.last_words()
        raise user_error(f"the bench worker {how}" + (f": {words}" if words else ""))

    def last_words(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the worker process, all its threads, and of the live
        processes it started (``--processes``: a supervisor and its workers), Linux /proc."""
        if self.pid is None:
            return None
        total, pending, seen = 0.0, [self.pid], set()
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                if pid == self.pid:
                    return None
                continue  # a child that ended meanwhile
            pending.extend(_children(pid))
        return total

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ask_to_stop(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait()


def _stuck_tasks() -> str:
    """This loop's other tasks, each with the line it waits at (a one-line diagnosis)."""
    here, parts = asyncio.current_task(), []
    for task in asyncio.all_tasks():
        if task is here:
            continue
        frames: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            frames.append(f"{coro.cr_code.co_name}:{coro.cr_frame.f_lineno}")
            coro = coro.cr_await  # down to the innermost await
        parts.append(f"{task.get_name()} in {' > '.join(frames) or '?'}")
    return "; ".join(parts) or "(no task)"


def _children(pid: int) -> list[int]:
    """Pids of the children of ``pid``, from every thread's ``children`` list (Linux)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found += [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                pass
    except OSError:
        pass
    return found


class _ThreadWorker(_Workers):
    """A ``Worker`` on a thread of this process: the only way to serve ``memory://``. The
    worker thread writes ``error`` before it sets ``_finished``; the producer's thread reads
    ``error`` only after seeing ``_finished`` set (the Event orders the two)."""

    mode = "thread"

    def __init__(self, app: Celery, plan: Plan) -> None:
        from ..worker.worker import Worker

        self.worker = Worker(
            app, hostname=f"bench{os.getpid()}@thread", queues=[plan.queue],
            loop_workers=plan.loop_workers, loop_concurrency=plan.loop_concurrency,
            sync_workers=plan.sync_workers, prefetch_multiplier=plan.prefetch_multiplier,
            task_events=plan.task_events,
        )
        self.error: BaseException | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-bench-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # reported by check() on the producer's thread
            self.error = exc
        finally:
            self._finished.set()

    def start(self) -> None:
        self._thread.start()

    def check(self) -> None:
        if self._finished.is_set():
            raise user_error(f"the bench worker stopped: {self.error or 'no error'}")

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._finished.is_set()

    def ask_to_stop(self) -> None:
        self.worker.stop()

    def kill(self) -> None:
        self.worker.stop()  # a thread cannot be killed; this daemon one ends with the process


# -- output ---------------------------------------------------------------------------------


class _Output:
    """Header, live progress bar and summary on stdout; with ``--json``, nothing but the one
    JSON object at the end. Used from the producer's thread only."""

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json, self.quiet = as_json, quiet
        self.bar_open, self._next_draw = False, 0.0
        self._interval = 0.1 if sys.stdout.isatty() else 1.0

    def line(self, text: str, header: bool = False) -> None:
        if not self.as_json and not (header and self.quiet):
            click.echo(text)

    def bar(self, done: int, total: int, failed: int, elapsed: float, force: bool = False) -> None:
        now = time.monotonic()
        if self.as_json or (now < self._next_draw and not force):
            return
        self._next_draw = now + self._interval
        filled = 40 * done // total
        rate = done / elapsed if elapsed > 0 else 0.0
        failures = f"  {failed} failed" if failed else ""
        sys.stdout.write(
            f"\r[{'#' * filled}{'.' * (40 - filled)}] {done}/{total} {rate:8.0f} tasks/s{failures}"
        )
        sys.stdout.flush()
        self.bar_open = True

    def end_bar(self) -> None:
        if self.bar_open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.bar_open = False


def _workers_text(plan: Plan, pid: int | None) -> str:
    if plan.worker_mode == "external":
        return f"the workers already consuming {plan.queue}"
    loops, syncs = plan.loop_workers or 0, plan.sync_workers or 0
    where = f"pid {pid}" if pid is not None else "a thread of this process (memory:// broker)"
    return (f"{where}: {loops} loop {pluralize(loops, 'worker')} × {plan.loop_concurrency} + "
            f"{syncs} sync {pluralize(syncs, 'worker')}, prefetch multiplier "
            f"{plan.prefetch_multiplier}")


def header(plan: Plan, app: Celery, notes: list[str]) -> list[str]:
    results = (f"{mask_url(app.conf.result_backend)} (every result awaited)" if plan.results
               else "not stored: each task records when it ends, the bench counts those records")
    return [
        f"celery bench: {plan.tasks} {pluralize(plan.tasks, 'task')}: {plan.async_tasks} async "
        f"(sleep {plan.io_ms:g} ms"
        f"{f', {plan.async_cpu_ms:g} ms CPU' if plan.async_cpu_ms else ''}) + "
        f"{plan.tasks - plan.async_tasks} sync "
        f"({plan.cpu_ms:g} ms CPU), {plan.payload_bytes}-byte payload, "
        f"up to {plan.in_flight} in flight",
        f"  broker   {mask_url(app.broker_url)}",
        f"  results  {results}",
        f"  queue    {plan.queue} (purged at the end)",
        *(["  events   task events on (-E)"] if plan.task_events else []),
        *(f"  note     {note}" for note in notes),
    ]


def summary(r: dict[str, Any], cleanup_notes: list[str]) -> list[str]:
    lines = [
        f"tasks       {r['finished']} finished ({r['failed']} failed) in {r['elapsed_s']:.2f} s",
        f"throughput  {r['throughput_per_s'] or 0:.0f} tasks/s",
    ]
    if r["latency_p50_ms"] is not None:
        lines.append(
            f"latency     p50 {r['latency_p50_ms']:.1f} ms   p90 {r['latency_p90_ms']:.1f} ms   "
            f"p99 {r['latency_p99_ms']:.1f} ms   max {r['latency_max_ms']:.1f} ms   "
            f"({r['latency_measures']}; up to {r['workload']['in_flight']} in flight)"
        )
    cpu, purged = r["cpu_per_task_us"], r["purged"]
    lines.append(f"worker CPU  {cpu:.0f} µs per task (user+system, all threads of the worker "
                 "process)" if cpu is not None else f"worker CPU  {r['cpu_measures']}")
    lines.append(f"producer    {r['producer_cpu_per_task_us']:.0f} µs CPU per task, busy "
                 f"{r['producer_busy'] or 0:.0%} of the time (this process; near 100 %: the "
                 "producer is the limit)")
    lines.append(f"queue       {r['queue']} purged ({purged} {pluralize(purged, 'message')} "
                 "still waiting)" if purged is not None else f"queue       {r['queue']} NOT purged")
    return lines + [f"note        {note}" for note in cleanup_notes]


# -- the run --------------------------------------------------------------------------------


class _CompletionLog:
    """The file the bench tasks append ``RECORD``s to when results are not stored. Read on
    the producer's thread only; a record cut in two by a read waits for the next read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")
        self._offset, self._rest = 0, b""

    def read(self) -> list[tuple[int, float]]:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._rest + data
        whole = len(data) - len(data) % RECORD.size
        self._rest = data[whole:]
        return [RECORD.unpack_from(data, at) for at in range(0, whole, RECORD.size)]


class _Run:
    """One bench run: check the servers, start the worker, warm up, send and wait, clean up.
    Every attribute is touched on the producer's event loop thread only."""

    def __init__(self, app: Celery, plan: Plan, worker: _Workers, out: _Output,
                 scratch: Path) -> None:
        self.app, self.plan, self.worker, self.out = app, plan, worker, out
        self.payload = "x" * plan.payload_bytes
        self.completions = None if plan.results else _CompletionLog(scratch / "completions")
        self.sent_at = [0.0] * plan.tasks  # --no-results: time.time() of each send
        self.task_ids: list[str] = []  # results to delete at the end
        self.latencies: list[float] = []
        self.cleanup_notes: list[str] = []
        self.done = self.failed = 0
        self.first_failure = ""
        self.started = self.elapsed = self.own_cpu = 0.0
        self.cpu: float | None = None
        self.purged: int | None = None
        self.connected = False  # the servers answered: the clean-up may use them
        self.terminated = False  # SIGTERM cancelled the run

    async def main(self) -> None:
        """``run()``; SIGTERM cancels it as Ctrl-C does, so the clean-up runs either way."""
        loop, me = asyncio.get_running_loop(), asyncio.current_task()
        on_main = threading.current_thread() is threading.main_thread()
        if on_main and me is not None:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm, me)
        try:
            await self.run()
        finally:
            if on_main:
                loop.remove_signal_handler(signal.SIGTERM)

    def _on_sigterm(self, task: asyncio.Task[Any]) -> None:
        self.terminated = True
        task.cancel()

    async def run(self) -> None:
        try:
            await self._check_servers()
            self.connected = True
            self.worker.start()
            self.out.line(f"  worker   {_workers_text(self.plan, self.worker.pid)}", header=True)
            await self._supervise(self._warm_up(), running=False)
            cpu0, own0 = self.worker.cpu_seconds(), time.process_time()
            self.started = time.perf_counter()
            await self._supervise(self._produce(), running=True)
            cpu1, self.own_cpu = self.worker.cpu_seconds(), time.process_time() - own0
            if cpu0 is not None and cpu1 is not None:
                self.cpu = cpu1 - cpu0
            self.out.bar(self.done, self.plan.tasks, self.failed, self.elapsed, force=True)
        finally:
            self.out.end_bar()
            await self._clean_up()

    async def _check_servers(self) -> None:
        app = self.app
        wait = float(app.conf.broker_connection_timeout or 4) + 1
        checks = [("broker", app.broker_url, app.transport.ping)]
        if self.plan.results:
            checks.append(("result backend", app.conf.result_backend, app.backend.ping))
        for what, url, ping in checks:
            try:
                async with asyncio.timeout(wait):
                    await ping()
            except (TimeoutError, CeleryError) as exc:
                why = exc if isinstance(exc, CeleryError) else f"no answer within {wait:g} s"
                raise user_error(f"{what} {mask_url(url)}: unreachable ({why})") from exc

    async def _send(self, index: int) -> AsyncResult:
        """Send task ``index`` (negative: a warm-up task, -1 async, -2 sync, no work)."""
        plan, warm_up = self.plan, index < 0
        is_async = index == -1 if warm_up else plan.is_async(index)
        name, work_ms = (IO_TASK, plan.io_ms) if is_async else (CPU_TASK, plan.cpu_ms)
        completions = str(self.completions.path) if self.completions else None
        args = (index, "" if warm_up else self.payload, 0.0 if warm_up else work_ms, completions)
        # Only when asked for: a worker of an older version knows no fifth argument.
        kwargs = {"cpu_ms": plan.async_cpu_ms} if is_async and plan.async_cpu_ms and \
            not warm_up else None
        # Noted before sending: a send cut short by Ctrl-C may still have reached the broker.
        task_id = str(uuid.uuid4())
        if plan.results:
            self.task_ids.append(task_id)
        return await self.app.tasks[name].aapply_async(
            args, kwargs, queue=plan.queue, ignore_result=not plan.results, task_id=task_id
        )

    async def _warm_up(self) -> None:
        """One task of each kind the run uses, so timing starts with a consuming worker."""
        plan = self.plan
        kinds = ([-1] if plan.async_tasks else []) + ([-2] if plan.tasks > plan.async_tasks else [])
        sent = [await self._send(index) for index in kinds]
        if plan.results:
            for result in sent:
                value = await result.aget(propagate=False)
                if result.state != states.SUCCESS:
                    raise user_error(f"the warm-up task {result.name} failed: {value!r}")
            return
        assert self.completions is not None
        seen: set[int] = set()
        while not seen.issuperset(kinds):
            await asyncio.sleep(0.005)
            seen.update(index for index, _ in self.completions.read())

    async def _produce(self) -> None:
        """Send every task, at most ``in_flight`` outstanding. With results, a task per send
        awaits its result; else ``_count`` reads the completion records the tasks write."""
        plan, gate = self.plan, asyncio.Semaphore(self.plan.in_flight)
        try:
            async with asyncio.TaskGroup() as group:
                if not plan.results:
                    group.create_task(self._count(gate))
                for index in range(plan.tasks):
                    await gate.acquire()
                    if plan.results:
                        group.create_task(self._send_and_await(index, gate))
                    else:
                        self.sent_at[index] = time.time()
                        await self._send(index)
        except BaseExceptionGroup as exc:  # a send or a result read failed: raise that
            raise exc.exceptions[0] from None

    async def _send_and_await(self, index: int, gate: asyncio.Semaphore) -> None:
        try:
            sent = time.perf_counter()
            result = await self._send(index)
            value = await result.aget(propagate=False)
            if result.state == states.SUCCESS:
                self.latencies.append(time.perf_counter() - sent)
            else:
                self.failed += 1
                self.first_failure = self.first_failure or f"{result.state}: {value!r}"
            self.done += 1
            if self.done == self.plan.tasks:
                self.elapsed = time.perf_counter() - self.started
        finally:
            gate.release()

    async def _count(self, gate: asyncio.Semaphore) -> None:
        """Count completion records until every task is in: each frees a slot and gives a
        latency, send to task end on the wall clock (one machine: one clock)."""
        plan, completions = self.plan, self.completions
        assert completions is not None
        counted, start = bytearray(plan.tasks), time.time()
        last_end = start
        while self.done < plan.tasks:
            await asyncio.sleep(0.005)
            for index, ended in completions.read():
                if not 0 <= index < plan.tasks or counted[index]:
                    continue  # a warm-up task, or a redelivered one counted already
                counted[index] = 1
                self.done += 1
                self.latencies.append(ended - self.sent_at[index])
                last_end = max(last_end, ended)
                gate.release()
        self.elapsed = last_end - start

    async def _supervise(self, work: Coroutine[Any, Any, None], running: bool) -> None:
        """Await ``work`` while checking that the worker lives and tasks keep finishing;
        draws the progress bar while ``running``."""
        job = asyncio.ensure_future(work)
        last_done, last_change = self.done, time.monotonic()
        try:
            while not (await asyncio.wait({job}, timeout=0.05))[0]:
                self.worker.check()
                now = time.monotonic()
                if self.done != last_done:
                    last_done, last_change = self.done, now
                elif now - last_change > self.plan.timeout:
                    raise self._stalled(running)
                if running:
                    elapsed = time.perf_counter() - self.started
                    self.out.bar(self.done, self.plan.tasks, self.failed, elapsed)
            job.result()
        finally:
            if not job.done():
                job.cancel()
                if not (await asyncio.wait({job}, timeout=CANCEL_GRACE))[0]:
                    # The clean-up (stop the worker, purge) must run whatever hangs here.
                    print(f"celery bench: the sends did not end within {CANCEL_GRACE:g} s of "
                          f"being cancelled; cleaning up without them. Still waiting: "
                          f"{_stuck_tasks()}", file=sys.stderr)
            if job.done() and not job.cancelled():
                job.exception()  # retrieved: the error that ends the run is already raised

    def _stalled(self, running: bool) -> click.ClickException:
        plan, words = self.plan, self.worker.last_words()
        what = f"{self.done}/{plan.tasks} tasks finished" if running else "warming up"
        hint = (f"is a `celery worker` consuming queue {plan.queue}?" if plan.worker_mode ==
                "external" else f"the worker's last log line: {words or '(none)'}")
        return user_error(f"no task finished for {plan.timeout:g} s ({what}); {hint} "
                          "(raise --timeout for long tasks)")

    async def _clean_up(self) -> None:
        """Stop the worker first (so nothing it reserved comes back after the purge), purge
        the queue, delete the stored results, close this loop's connections. Best effort:
        nothing here hides the error that ended the run."""
        await self.worker.stop()
        if self.connected:
            await self._best_effort("purge", self._purge)
            if self.task_ids:
                await self._best_effort("deleting the results", self._forget_results)
        await self._best_effort("closing", lambda: self.app.transport.aclose())
        await self._best_effort("closing", lambda: self.app.backend.aclose())

    async def _purge(self) -> None:
        self.purged = await self.app.transport.purge(self.plan.queue)

    async def _forget_results(self) -> None:
        # Together (one SQLite transaction, one Redis DEL, per chunk): one at a time, the
        # tens of thousands an interrupted long run leaves took over 30 s under load.
        await self.app.backend.adelete_many(self.task_ids)

    async def _best_effort(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(15 + len(self.task_ids) / 1000):
                await step()
        except Exception as exc:
            self.cleanup_notes.append(f"{what} failed: {type(exc).__name__}: {exc}")

    def report(self, notes: list[str]) -> dict[str, Any]:
        """Everything measured: the ``--json`` object, which the human summary reads too."""
        plan, lat = self.plan, sorted(self.latencies)

        def pct(p: float) -> float | None:  # nearest rank
            rank = max(1, math.ceil(round(p * len(lat), 6)))
            return round(lat[rank - 1] * 1000, 3) if lat else None

        cpu_measures = "not measured: " + {
            "process": "/proc/<pid>/stat is not available here",
            "thread": "the worker runs in this process (memory:// broker)",
            "external": "external workers",
        }[plan.worker_mode] if self.cpu is None else (
            "user+system CPU time of the worker process (all threads, and the processes it "
            "started, from /proc/<pid>/stat) from the end of the warm-up to the last task, "
            "divided by the tasks")
        return {
            "tasks": plan.tasks,
            "finished": self.done,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed, 4),
            "throughput_per_s": round(self.done / self.elapsed, 1) if self.elapsed else None,
            **{f"latency_{name}_ms": pct(p) for name, p in
               (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
            "latency_measures": "send to result received" if plan.results
            else "send to task end, wall clock, as the task records it",
            "cpu_per_task_us": None if self.cpu is None
            else round(self.cpu / max(self.done, 1) * 1e6, 1),
            "cpu_measures": cpu_measures,
            # Near 100 %: the one producer (this process) is what limits the throughput.
            "producer_cpu_per_task_us": round(self.own_cpu / max(self.done, 1) * 1e6, 1),
            "producer_busy": round(self.own_cpu / self.elapsed, 3) if self.elapsed else None,
            "results": "stored and awaited" if plan.results else "not stored; completions counted",
            "broker": mask_url(self.app.broker_url),
            "result_backend": mask_url(self.app.conf.result_backend) or None,
            "queue": plan.queue,
            "purged": self.purged,
            "worker": {"mode": plan.worker_mode, "pid": self.worker.pid, **{
                name: getattr(plan, name) for name in
                ("loop_workers", "loop_concurrency", "sync_workers", "prefetch_multiplier",
                 "task_events")}},
            "workload": {"sync_tasks": plan.tasks - plan.async_tasks, **{
                name: getattr(plan, name) for name in
                ("async_tasks", "io_ms", "async_cpu_ms", "cpu_ms", "mix", "payload_bytes",
                 "in_flight")}},
            "notes": notes + self.cleanup_notes,
        }

    def stopped_text(self) -> str:
        worker = "left running" if self.plan.worker_mode == "external" else "stopped"
        purged = "purged" if self.purged is not None else "NOT purged"
        return f"the worker {worker}; queue {self.plan.queue} {purged}"


# -- the command ----------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tasks", type=click.IntRange(1), default=10000, help="Tasks to run [10000].")
@click.option("--io-ms", type=click.FloatRange(0), default=0.0,
              help="Async tasks await asyncio.sleep this many milliseconds [0].")
@click.option("--cpu-ms", type=click.FloatRange(0), default=0.0,
              help="Sync tasks burn this many milliseconds of CPU [0].")
@click.option("--async-cpu-ms", type=click.FloatRange(0), default=0.0,
              help="Async tasks burn this many milliseconds of CPU, half before their await "
                   "and half after [0].")
@click.option("--mix", type=click.FloatRange(0, 1), default=0.5,
              help="Fraction of async tasks; the rest are sync [0.5].")
@click.option("--payload-bytes", type=click.IntRange(0), default=0,
              help="Size of a string argument each task gets [0].")
@click.option("--loop-workers", type=click.IntRange(0),
              help="Event-loop threads [worker_loop_workers].")
@click.option("--loop-concurrency", type=click.IntRange(1),
              help="Async tasks at once per loop [worker_loop_concurrency].")
@click.option("--sync-workers", type=click.IntRange(0),
              help="Threads for sync tasks [worker_sync_workers, else the CPU count].")
@click.option("--prefetch-multiplier", type=click.IntRange(0),
              help="Messages reserved per concurrency slot [worker_prefetch_multiplier].")
@click.option("--in-flight", type=click.IntRange(1), default=1000,
              help="Most tasks sent and not yet finished at any time [1000].")
@click.option("--no-results", is_flag=True,
              help="Send with ignore_result; count completions instead of awaiting results.")
@click.option("--queue", metavar="NAME",
              help="Bench queue, purged at the end [celery-bench-<pid>].")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=60.0,
              metavar="SECONDS", help="Give up when no task has finished for this long [60].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@click.option("--task-events", is_flag=True,
              help="Start the worker with -E: it sends task events (what they cost).")
@click.option("--worker-arg", "worker_args", multiple=True, metavar="ARG",
              help="One more argument for the worker the bench starts, e.g. "
                   "--worker-arg=--metrics-port=9808 (repeatable).")
@click.option("--external-worker", is_flag=True,
              help="Start no worker: use the workers already consuming --queue.")
@click.pass_obj
def bench(obj: CLIContext, **opts: Any) -> None:
    """Run a synthetic workload on the app's broker and result backend; report throughput,
    latency percentiles and worker CPU per task."""
    from ..worker.executor.loop import new_event_loop

    app = obj.app
    plan, notes = make_plan(obj, app, opts)
    out = _Output(opts["as_json"], obj.quiet)
    for text in header(plan, app, notes):
        out.line(text, header=True)
    with tempfile.TemporaryDirectory(prefix="celery-bench-") as tmp:
        scratch = Path(tmp)
        worker = (
            _ChildWorker(obj, app, plan, scratch) if plan.worker_mode == "process"
            else _ThreadWorker(app, plan) if plan.worker_mode == "thread" else _Workers()
        )
        run = _Run(app, plan, worker, out, scratch)
        try:
            # On a new event loop in this thread: uvloop's when installed, as the worker's.
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(run.main())
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not run.terminated:
                raise
            why = "terminated by SIGTERM" if run.terminated else "interrupted"
            raise user_error(f"{why}: {run.stopped_text()}") from None
        finally:
            worker.kill()
    report = run.report(notes)
    if opts["as_json"]:
        click.echo(json.dumps(report))
    else:
        for text in summary(report, run.cleanup_notes):
            click.echo(text)
    if run.failed:
        raise user_error(f"{run.failed} of {plan.tasks} bench tasks failed; the first: "
                         f"{run.first_failure}")
