"""``celery capacity``: sweep worker settings with ``celery bench``'s runner, fit the capacity
model, and recommend the smallest worker that meets a target rate and p99.

Threads: as in ``celery bench``, the whole sweep (every measured point, the progress bar, the
supervision of each worker process) runs on one event loop on the main thread, so the
sweep's state needs no lock. Each point is a ``celery worker`` child process that the
bench's ``_Run`` starts, stops and whose queue it purges before the next point starts.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from .. import states
from ..capacity import Point, Scaling, fit_scaling, recommend
from ..capacity.report import html_page, text_lines
from ..utils.text import mask_url
from .base import CLIContext, user_error
from .bench import Plan, _ChildWorker, _Output, _Run, make_plan

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..result import AsyncResult

__all__ = ["capacity"]

#: Most tasks one point may send (a bound, not a goal: points are bounded in time).
POINT_TASK_CAP = 200_000
#: Seconds a point is assumed to cost beyond its measured time before one was measured.
START_GUESS_S = 3.0

# -- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What each task does: the bench's synthetic tasks, or one of the app's own tasks called
    with a sample of real arguments, in turn."""

    #: "async", "sync" or "mixed": which thread axis the sweep grows.
    kind: str
    task: str | None = None
    samples: tuple[tuple[tuple[Any, ...], dict[str, Any]], ...] = ()
    args_file: str | None = None

    @property
    def axis(self) -> str:
        return {"async": "loop concurrency", "sync": "sync workers",
                "mixed": "loop concurrency = sync workers"}[self.kind]


def _is_call(value: Any) -> bool:
    """``{"args": [...], "kwargs": {...}}``, either key optional, no other key."""
    return isinstance(value, dict) and set(value) <= {"args", "kwargs"} and \
        isinstance(value.get("args", []), list) and isinstance(value.get("kwargs", {}), dict)


def read_samples(path: str) -> tuple[tuple[tuple[Any, ...], dict[str, Any]], ...]:
    """``--args-from``: one call a line, a JSON array (the arguments) or an object with
    ``args`` and/or ``kwargs``; blank lines are skipped."""
    samples: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise user_error(f"--args-from {path}: cannot read it ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise user_error(f"--args-from {path}:{number}: not JSON ({exc.msg})") from None
        if isinstance(value, list):
            samples.append((tuple(value), {}))
        elif _is_call(value):
            samples.append((tuple(value.get("args", [])), dict(value.get("kwargs", {}))))
        else:
            raise user_error(f"--args-from {path}:{number}: give a JSON array of arguments or "
                             'an object {"args": [...], "kwargs": {...}}')
    if not samples:
        raise user_error(f"--args-from {path}: no arguments in it (one JSON array a line)")
    return tuple(samples)


def make_workload(app: Celery, opts: dict[str, Any]) -> Workload:
    """Check the workload options: a synthetic mix, or ``--task`` with its samples."""
    if opts["task"] is None:
        if opts["args_from"]:
            raise user_error("--args-from gives the arguments of --task: give --task too")
        mix = opts["mix"]
        return Workload("async" if mix == 1 else "sync" if mix == 0 else "mixed")
    synthetic = [name for name, default in (("io_ms", 0.0), ("cpu_ms", 0.0), ("async_cpu_ms", 0.0),
                                            ("payload_bytes", 0)) if opts[name] != default]
    if synthetic or opts["mix"] is not None:
        names = ", ".join(f"--{n.replace('_', '-')}" for n in synthetic + (
            ["mix"] if opts["mix"] is not None else []))
        raise user_error(f"{names}: options of the synthetic workload, not with --task")
    name = opts["task"]
    if name not in app.tasks:
        known = sorted(n for n in app.tasks if not n.startswith("celery."))
        raise user_error(f"unknown task {name!r}; the app's tasks: "
                         f"{', '.join(known) if known else '(none)'}")
    samples = read_samples(opts["args_from"]) if opts["args_from"] else (((), {}),)
    kind = "async" if app.tasks[name].is_async else "sync"
    return Workload(kind, name, samples, opts["args_from"])


def _bench_options(opts: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """The options ``celery bench`` would get for this workload (its checks run on them)."""
    mix = {"async": 1.0, "sync": 0.0}.get(workload.kind, opts["mix"] if opts["mix"] is not None
                                          else 0.5)
    return {
        "tasks": POINT_TASK_CAP, "io_ms": opts["io_ms"], "cpu_ms": opts["cpu_ms"],
        "async_cpu_ms": opts["async_cpu_ms"], "mix": mix, "payload_bytes": opts["payload_bytes"],
        "loop_workers": 1, "loop_concurrency": 1, "sync_workers": 1,
        "prefetch_multiplier": opts["prefetch_multiplier"], "in_flight": 1,
        "no_results": False, "queue": opts["queue"], "timeout": opts["timeout"],
        "task_events": False, "worker_args": (), "external_worker": False,
    }


# -- one measured point ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """The worker settings of one point."""

    slots: int
    processes: int = 1
    prefetch: int = 4
    #: Loop threads sharing the slots of async tasks (each gets slots / loop_workers).
    loop_workers: int = 1

    def apply(self, base: Plan, kind: str) -> Plan:
        slots = self.slots
        return replace(
            base, loop_workers=self.loop_workers,
            loop_concurrency=math.ceil(slots / self.loop_workers) if kind != "sync" else 1,
            sync_workers=slots if kind != "async" else 1,
            prefetch_multiplier=self.prefetch,
            # Enough waiting to keep every slot of every process busy between round trips.
            in_flight=3 * slots * self.processes + 10,
            worker_args=base.worker_args + ((f"--processes={self.processes}",)
                                            if self.processes > 1 else ()),
        )

    def describe(self, workload: Workload) -> str:
        procs = f" × {self.processes} processes" if self.processes > 1 else ""
        loops = f", {self.loop_workers} loop workers" if self.loop_workers > 1 else ""
        return f"{workload.axis} {self.slots}{procs}, prefetch {self.prefetch}{loops}"


class _SweepOutput(_Output):
    """The bench's output, drawing the whole sweep's progress instead of one run's."""

    def __init__(self, sweep: Sweep) -> None:
        super().__init__(sweep.as_json, sweep.quiet)
        self.sweep, self.what = sweep, ""

    def line(self, text: str, header: bool = False) -> None:
        pass  # the bench's header and worker lines: the sweep prints its own

    def bar(self, done: int, total: int, failed: int, elapsed: float, force: bool = False) -> None:
        now = time.monotonic()
        if self.as_json or self.quiet or (now < self._next_draw and not force):
            return
        self._next_draw = now + self._interval
        spent, budget = self.sweep.spent(), self.sweep.budget
        filled = min(30, int(30 * spent / budget))
        sys.stdout.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {spent:5.1f}/{budget:g} s  "
                         f"{self.what}: {done} tasks\033[K")
        sys.stdout.flush()
        self.bar_open = True


def machine_cpu() -> tuple[int, int] | None:
    """``(busy, total)`` clock ticks of all this machine's cores since boot (Linux)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = sum(ticks[3:5])  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


class _PointRun(_Run):
    """One point: the bench's run, bounded in time instead of in tasks. It first sends tasks
    one at a time for ``probe_s`` seconds (the latency with no queue) when asked, then keeps
    ``in_flight`` tasks outstanding for ``seconds``; throughput is counted over the steady
    window after the first quarter."""

    def __init__(self, app: Celery, plan: Plan, worker: _ChildWorker, out: _Output,
                 scratch: Path, workload: Workload, seconds: float, probe_s: float) -> None:
        super().__init__(app, plan, worker, out, scratch)
        self.workload, self.seconds, self.probe_s = workload, seconds, probe_s
        self.finished_at: list[float] = []
        self.probe: list[float] = []
        self.window = (0.0, 0.0)
        self.machine: tuple[int, int] | None = None

    async def _send(self, index: int) -> AsyncResult:
        if self.workload.task is None:
            return await super()._send(index)
        args, kwargs = self.workload.samples[max(index, 0) % len(self.workload.samples)]
        task_id = str(uuid.uuid4())
        self.task_ids.append(task_id)  # noted before sending, as the bench does
        return await self.app.tasks[self.workload.task].aapply_async(
            args, kwargs, queue=self.plan.queue, task_id=task_id)

    async def _send_and_await(self, index: int, gate: asyncio.Semaphore) -> None:
        await super()._send_and_await(index, gate)
        self.finished_at.append(time.perf_counter())

    async def _probe(self) -> int:
        """Tasks one at a time: the latency of a task that finds the worker idle."""
        end, index = time.perf_counter() + self.probe_s, 0
        while index < 5 or (time.perf_counter() < end and index < 200):
            sent = time.perf_counter()
            result = await self._send(index)
            value = await result.aget(propagate=False)
            if result.state != states.SUCCESS:
                self.failed += 1
                self.first_failure = self.first_failure or f"{result.state}: {value!r}"
                return index + 1
            self.probe.append(time.perf_counter() - sent)
            index += 1
        return index

    async def _produce(self) -> None:
        index = await self._probe() if self.probe_s else 0
        self.done += len(self.probe)
        gate, start = asyncio.Semaphore(self.plan.in_flight), time.perf_counter()
        before = machine_cpu()
        deadline = start + self.seconds
        try:
            async with asyncio.TaskGroup() as group:
                while time.perf_counter() < deadline and index < self.plan.tasks \
                        and not self.failed:
                    await gate.acquire()
                    group.create_task(self._send_and_await(index, gate))
                    index += 1
        except BaseExceptionGroup as exc:  # a send or a result read failed: raise that
            raise exc.exceptions[0] from None
        self.window = (start + self.seconds / 4, deadline)
        after = machine_cpu()
        if before and after and after[1] > before[1]:
            self.machine = (after[0] - before[0], after[1] - before[1])
        self.elapsed = time.perf_counter() - self.started

    def point(self, config: Config) -> Point:
        first, last = self.window
        finished = sum(1 for t in self.finished_at if first <= t <= last)
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[max(0, math.ceil(p * len(lat)) - 1)] * 1000, 3) if lat else None

        cpu = self.cpu
        return Point(
            slots=config.slots, processes=config.processes, prefetch=config.prefetch,
            loop_workers=config.loop_workers, tasks=self.done,
            throughput=round(finished / (last - first), 2),
            cpu_per_task_ms=round(cpu / max(self.done, 1) * 1000, 4) if cpu is not None else None,
            worker_cores=round(cpu / self.elapsed, 3) if cpu is not None and self.elapsed else None,
            producer_busy=round(self.own_cpu / self.elapsed, 3) if self.elapsed else 0.0,
            machine_busy=round(self.machine[0] / self.machine[1], 3) if self.machine else None,
            p50_ms=pct(0.5), p99_ms=pct(0.99),
        )


# -- the sweep ------------------------------------------------------------------------------


class Sweep:
    """Chooses the points, measures each within the time budget, and keeps what it saw."""

    def __init__(self, obj: CLIContext, app: Celery, base: Plan, workload: Workload,
                 opts: dict[str, Any]) -> None:
        self.obj, self.app, self.base, self.workload = obj, app, base, workload
        self.budget, self.as_json, self.quiet = opts["budget"], opts["as_json"], obj.quiet
        self.target_rate, self.max_util = opts["target_rate"], opts["max_utilisation"]
        self.max_cores, self.max_slots = opts["max_cores"], opts["max_slots"]
        self.point_s = min(max(self.budget / 10, 1.0), 8.0)
        self.points: list[Point] = []
        #: Points with another prefetch multiplier or more loop workers than the sweep's.
        self.variants: list[Point] = []
        self.prefetch: int = base.prefetch_multiplier or 4  # the option, else the app's
        self.sweep_prefetch = opts["prefetch_multiplier"] is None
        self.notes: list[str] = []
        self.probe: list[float] = []
        self.run: _PointRun | None = None
        self.report: dict[str, Any] = {}
        self.purged = True
        self.started = time.monotonic()
        self._overhead = START_GUESS_S

    def spent(self) -> float:
        return time.monotonic() - self.started

    def affordable(self) -> bool:
        return self.spent() + self._overhead + self.point_s <= self.budget

    def slot_steps(self) -> list[int]:
        steps, n = [], 1
        while n < self.max_slots:
            steps.append(n)
            n *= 2
        return steps + [self.max_slots]

    async def measure(self, config: Config, scratch: Path, record: str = "points") -> Point:
        """Start a worker with ``config``, keep it saturated ``point_s`` seconds, stop it."""
        plan = config.apply(self.base, self.workload.kind)
        where = Path(tempfile.mkdtemp(prefix="point-", dir=scratch))
        out = _SweepOutput(self)
        out.what = config.describe(self.workload)
        began = time.monotonic()
        run = self.run = _PointRun(self.app, plan, _ChildWorker(self.obj, self.app, plan, where),
                                   out, where, self.workload, self.point_s,
                                   probe_s=0.0 if self.probe else min(self.point_s / 2, 2.0))
        try:
            await run.main()
        finally:
            run.worker.kill()
            out.end_bar()
            self.purged = self.purged and run.purged is not None
        if run.failed:
            raise user_error(f"{run.failed} tasks failed at {out.what}; the first: "
                             f"{run.first_failure}")
        self.probe = self.probe or run.probe
        self._overhead = max(time.monotonic() - began - self.point_s, 0.5)
        point = run.point(config)
        if record == "variants":
            self.variants.append(point)
        if record != "points":
            return point
        self.points.append(point)
        if point.throughput * self.point_s * 0.75 < 20:
            self.notes.append(f"{out.what}: under 20 tasks finished in its window; a longer "
                              "--budget measures it better")
        if not self.as_json and not self.quiet:
            click.echo(f"  {out.what}: {point.throughput:.1f} tasks/s")
        return point

    async def all(self, scratch: Path, opts: dict[str, Any]) -> None:
        """The sweep, the model (``self.report``) and, with ``--verify``, its check."""
        await self.main(scratch)
        self.report = build_report(self, opts)
        if opts["verify"]:
            await self.verify(self.report, scratch)

    async def verify(self, report: dict[str, Any], scratch: Path) -> None:
        """``--verify``: measure the recommended worker, 1.5 times a point's time, and set
        ``report["verification"]``."""
        worker = report["recommendation"]["worker"]
        slots = worker["sync_workers"] if self.workload.kind == "sync" else \
            worker["loop_concurrency"] * worker["loop_workers"]
        config = Config(slots, worker["processes"], worker["prefetch_multiplier"],
                        worker["loop_workers"])
        self.point_s *= 1.5
        point = await self.measure(config, scratch, record="none")
        predicted = report["recommendation"]["predicted"]["throughput_at_saturation"]
        error = point.throughput / predicted - 1
        report["verification"] = {
            "throughput": point.throughput, "predicted": predicted, "error": round(error, 4),
            "meets_target": None if self.target_rate is None
            else point.throughput >= self.target_rate,
            "point": asdict(point)}
        if abs(error) > 0.25:
            report["notes"].append(f"--verify: the recommended worker did {point.throughput:g} "
                                   f"tasks/s, {error:+.0%} off the prediction")

    async def main(self, scratch: Path) -> None:
        """The thread axis until it meets the target, flattens or the budget ends; then more
        processes when one is CPU-bound and short of the target; then other settings."""
        prefetch = self.prefetch
        last: Point | None = None
        for n in self.slot_steps():
            if self.points and not self.affordable():
                break
            point = await self.measure(Config(n, 1, prefetch), scratch)
            enough = self.target_rate is not None and len(self.points) >= 3 and \
                point.throughput * self.max_util >= self.target_rate
            flat = last is not None and point.throughput < 1.1 * last.throughput
            last = point if last is None or point.throughput > last.throughput else last
            if enough or flat:
                break
        assert last is not None
        short = self.target_rate is None or last.throughput * self.max_util < self.target_rate
        per_process = last.worker_cores is not None and last.worker_cores >= 0.7
        if short and per_process:
            for p in (2, 4, 8):
                if p > self.max_cores or not self.affordable():
                    break
                await self.measure(Config(last.slots, p, prefetch), scratch)
        await self.other_settings(last, scratch)

    async def other_settings(self, best: Point, scratch: Path) -> None:
        """With the budget left, the best slot count with prefetch multiplier 1 (unless
        ``--prefetch-multiplier`` fixed it) and, for async tasks whose worker was busy on
        CPU or on a free-threaded build, its slots spread over 2 loop workers."""
        free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
        tries = []
        if self.sweep_prefetch and self.prefetch != 1:
            tries.append(Config(best.slots, 1, 1))
        busy = best.worker_cores is not None and best.worker_cores >= 0.7
        if self.workload.kind != "sync" and best.slots >= 2 and (free_threaded or busy):
            tries.append(Config(best.slots, 1, self.prefetch, loop_workers=2))
        for config in tries:
            if not self.affordable():
                break
            await self.measure(config, scratch, record="variants")


# -- the model and the report ---------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)] * 1000


def _bound(points: list[Point], threads: Scaling, free_threaded: bool) -> str:
    """What limits the best point measured, in words."""
    top = max(points, key=lambda p: p.throughput)
    one = [p for p in points if p.processes == 1]
    growing = len(one) >= 2 and one[-1].throughput >= 1.6 * one[-2].throughput
    if top.producer_busy >= 0.85:
        return ("this command's producer (one thread sends and awaits every task, "
                f"{top.producer_busy:.0%} busy): the worker may do more than measured")
    if top.worker_cores is not None and top.worker_cores >= 0.8 * top.processes:
        if not free_threaded:
            return (f"the GIL: each worker process ran Python on about one core "
                    f"({top.worker_cores:.2f} cores busy over {top.processes} "
                    f"{'process' if top.processes == 1 else 'processes'}); --processes scales it")
        return f"worker CPU ({top.worker_cores:.2f} cores busy)"
    if growing:
        return ("the task itself: each slot is busy for the task's duration, and throughput "
                "still grew with slots at the end of the sweep")
    if top.machine_busy is not None and top.machine_busy >= 0.9:
        return (f"this machine's CPUs: {top.machine_busy:.0%} of all {os.cpu_count()} cores "
                "were busy, other processes included (the broker, this command, anything "
                "else running): the worker got a share of them")
    cores = f"{top.worker_cores:.0%} of a core" if top.worker_cores is not None else "unmeasured"
    return ("broker round trips: throughput stopped growing with slots while the worker's "
            f"CPU stayed low ({cores})")


def build_report(sweep: Sweep, opts: dict[str, Any]) -> dict[str, Any]:
    """Fit the model to the sweep and choose the configuration: the ``--json`` object."""
    points, workload = sweep.points, sweep.workload
    one = [p for p in points if p.processes == 1]
    threads = fit_scaling([(p.slots, p.throughput) for p in one])
    variants, used = _variants(sweep)
    planned = threads if used is None else Scaling(
        threads.lam * used["gain"], threads.sigma, threads.kappa, threads.r2,
        threads.max_error, threads.points)
    best_one = max(one, key=lambda p: p.throughput)
    multi = [(1, best_one.throughput)] + [(p.processes, p.throughput) for p in points
                                          if p.processes > 1]
    processes = fit_scaling(multi) if len(multi) > 1 else None

    def factor(p: int) -> float:
        return processes(p) / processes(1) if processes is not None else 1.0

    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    base_p50, base_p99 = _percentile(sweep.probe, 0.5), _percentile(sweep.probe, 0.99)
    cpu = [p.cpu_per_task_ms for p in points if p.cpu_per_task_ms is not None]
    chosen, meets = recommend(
        planned, factor, max_slots=max(p.slots for p in one),
        max_processes=min(opts["max_cores"], max(p for p, _ in multi)) if processes else 1,
        base_p50_ms=base_p50, base_p99_ms=base_p99,
        cpu_per_task_ms=sum(cpu) / len(cpu) if cpu else None,
        target_rate=opts["target_rate"], target_p99_ms=opts["target_p99"],
        max_utilisation=opts["max_utilisation"])
    bound = _bound(points, threads, free_threaded)
    needed = machines = None
    if not meets and opts["target_rate"] and not bound.startswith(
            ("broker", "this command", "this machine")):
        per_process = max(p.throughput / p.processes for p in points)
        needed = math.ceil(opts["target_rate"] / (per_process * opts["max_utilisation"]))
        machines = math.ceil(needed / opts["max_cores"])
    top = max(p.slots for p in one)
    saturation_slots = max(range(1, top + 1), key=threads)
    reached = saturation_slots < top or (
        len(one) >= 2 and one[-1].throughput < 1.1 * max(p.throughput for p in one[:-1]))
    return {
        "workload": _workload_json(sweep),
        "broker": mask_url(sweep.app.broker_url),
        "result_backend": mask_url(sweep.app.conf.result_backend),
        "queue": sweep.base.queue, "purged": sweep.purged,
        "budget_s": sweep.budget, "elapsed_s": round(sweep.spent(), 2),
        "free_threaded": free_threaded,
        "points": [asdict(p) for p in points],
        "base_latency": {"tasks": len(sweep.probe), "p50_ms": round(base_p50, 3),
                         "p99_ms": round(base_p99, 3),
                         "measures": "send to result received, one task at a time"},
        "model": {
            "axis": workload.axis,
            "threads": _scaling_json(threads),
            "processes": _scaling_json(processes) if processes else None,
            "saturation": {"slots": saturation_slots, "reached": reached,
                           "throughput": round(threads(saturation_slots), 1)},
        },
        "target": {"rate": opts["target_rate"], "p99_ms": opts["target_p99"],
                   "max_utilisation": opts["max_utilisation"], "max_cores": opts["max_cores"]},
        "variants": variants,
        "recommendation": _recommendation_json(sweep, chosen, meets, bound, needed, machines,
                                               used),
        "notes": sweep.notes,
    }


def _scaling_json(curve: Scaling) -> dict[str, Any]:
    return {"lambda": round(curve.lam, 4), "sigma": round(curve.sigma, 6),
            "kappa": round(curve.kappa, 8), "r2": None if curve.r2 is None else round(curve.r2, 4),
            "max_error": round(curve.max_error, 4), "points": curve.points,
            "formula": curve.describe()}


def _workload_json(sweep: Sweep) -> dict[str, Any]:
    plan, workload = sweep.base, sweep.workload
    if workload.task:
        return {"kind": workload.kind, "task": workload.task, "args_from": workload.args_file,
                "samples": len(workload.samples)}
    return {"kind": workload.kind, "task": None, "io_ms": plan.io_ms, "cpu_ms": plan.cpu_ms,
            "async_cpu_ms": plan.async_cpu_ms, "mix": plan.mix,
            "payload_bytes": plan.payload_bytes}


def _variants(sweep: Sweep) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each other setting measured, against the sweep's point with the same slots; the one
    used: the best that gained at least 5 %, assumed to gain as much at every slot count."""
    variants: list[dict[str, Any]] = []
    for v in sweep.variants:
        base = next(p for p in sweep.points if p.processes == 1 and p.slots == v.slots)
        variants.append({
            "setting": f"prefetch multiplier {v.prefetch}" if v.prefetch != base.prefetch
            else f"{v.loop_workers} loop workers",
            "prefetch_multiplier": v.prefetch, "loop_workers": v.loop_workers,
            "slots": v.slots, "throughput": v.throughput, "baseline": base.throughput,
            "gain": round(v.throughput / base.throughput, 4), "used": False})
    best = max(variants, key=lambda v: float(v["gain"]), default=None)
    if best is None or best["gain"] < 1.05:
        return variants, None
    best["used"] = True
    return variants, best


def _recommendation_json(sweep: Sweep, chosen: Any, meets: bool, bound: str,
                         needed: int | None, machines: int | None,
                         used: dict[str, Any] | None) -> dict[str, Any]:
    config = Config(chosen.slots, chosen.processes,
                    used["prefetch_multiplier"] if used else sweep.prefetch,
                    used["loop_workers"] if used else 1)
    plan = config.apply(sweep.base, sweep.workload.kind)
    worker = {"loop_workers": plan.loop_workers, "loop_concurrency": plan.loop_concurrency,
              "sync_workers": plan.sync_workers, "prefetch_multiplier": plan.prefetch_multiplier,
              "processes": chosen.processes}
    args = [f"--loop-workers={plan.loop_workers}", f"--loop-concurrency={plan.loop_concurrency}",
            f"--sync-workers={plan.sync_workers}",
            f"--prefetch-multiplier={plan.prefetch_multiplier}"]
    latency = chosen.latency
    rate = chosen.rate
    return {
        "meets_target": meets,
        "slots": chosen.slots,
        "worker": worker,
        "worker_args": args + ([f"--processes={chosen.processes}"] if chosen.processes > 1 else []),
        "predicted": {
            "throughput_at_saturation": round(chosen.capacity, 1),
            "rate": round(rate, 1),
            "utilisation": round(rate / chosen.capacity, 3),
            "p50_ms": round(latency.p50_ms, 3) if latency else None,
            "p99_ms": round(latency.p99_ms, 3) if latency else None,
            "cpu_cores": round(chosen.cpu_cores, 3) if chosen.cpu_cores is not None else None,
        },
        "bound": bound,
        "processes_needed": needed,
        "machines_needed": machines,
    }


# -- the command ----------------------------------------------------------------------------


def _dry_run(sweep: Sweep) -> dict[str, Any]:
    steps = sweep.slot_steps()
    return {
        "dry_run": True, "workload": _workload_json(sweep),
        "broker": mask_url(sweep.app.broker_url),
        "result_backend": mask_url(sweep.app.conf.result_backend),
        "queue": sweep.base.queue, "budget_s": sweep.budget, "point_s": sweep.point_s,
        "axis": sweep.workload.axis, "slots": steps,
        "processes": [p for p in (2, 4, 8) if p <= sweep.max_cores],
        "prefetch_multiplier": sweep.base.prefetch_multiplier,
        "other_settings": (["prefetch multiplier 1"] if sweep.sweep_prefetch else []) + (
            ["2 loop workers, when the worker is busy on CPU"]
            if sweep.workload.kind != "sync" else []),
        "target": {"rate": sweep.target_rate, "max_utilisation": sweep.max_util},
    }


def _dry_run_text(d: dict[str, Any]) -> list[str]:
    w = d["workload"]
    what = (f"task {w['task']} with {w['samples']} argument sample(s)" if w["task"] else
            f"synthetic {w['kind']} tasks (io {w['io_ms']:g} ms, cpu {w['cpu_ms']:g} ms, "
            f"async cpu {w['async_cpu_ms']:g} ms, mix {w['mix']:g}, "
            f"{w['payload_bytes']}-byte payload)")
    return [
        f"celery capacity --dry-run: would measure {what}",
        f"  broker   {d['broker']}   results {d['result_backend']}",
        f"  queue    {d['queue']} (purged after each point)",
        f"  sweep    {d['axis']} in {', '.join(map(str, d['slots']))} (stopping once the target "
        f"is met with 3 points, or throughput stops growing), {d['point_s']:g} s a point, "
        f"prefetch multiplier {d['prefetch_multiplier']}",
        f"  then     --processes {', '.join(map(str, d['processes'])) or '(none: --max-cores 1)'}"
        " if one process is CPU-bound and short of the target",
        f"  and      {', '.join(d['other_settings']) or 'no other setting'} at the best "
        "slot count, with the budget left",
        f"  budget   {d['budget_s']:g} s; nothing is sent",
    ]


def _prepare(obj: CLIContext, opts: dict[str, Any]) -> Sweep:
    app = obj.app
    if urlsplit(app.broker_url).scheme == "memory":
        raise user_error("celery capacity measures worker processes: a memory:// broker "
                         "cannot cross processes; use the app's real broker")
    if not app.conf.result_backend:
        raise user_error("celery capacity awaits every task's result: configure a result "
                         "backend (or give --result-backend)")
    if opts["target_p99"] is not None and opts["target_rate"] is None:
        raise user_error("--target-p99 is the latency at --target-rate: give that too")
    workload = make_workload(app, opts)
    plan, notes = make_plan(obj, app, _bench_options(opts, workload))
    if not plan.results:
        raise user_error(f"celery capacity awaits every task's result: {notes[0]}")
    opts["max_cores"] = opts["max_cores"] or os.cpu_count() or 1
    return Sweep(obj, app, plan, workload, opts)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--io-ms", type=click.FloatRange(0), default=0.0,
              help="Synthetic async tasks await asyncio.sleep this many milliseconds [0].")
@click.option("--cpu-ms", type=click.FloatRange(0), default=0.0,
              help="Synthetic sync tasks burn this many milliseconds of CPU [0].")
@click.option("--async-cpu-ms", type=click.FloatRange(0), default=0.0,
              help="Synthetic async tasks burn this much CPU around their await [0].")
@click.option("--mix", type=click.FloatRange(0, 1), default=None,
              help="Fraction of async synthetic tasks; the rest are sync [0.5].")
@click.option("--payload-bytes", type=click.IntRange(0), default=0,
              help="Size of a string argument each synthetic task gets [0].")
@click.option("--task", metavar="NAME", help="Measure this task of the app instead.")
@click.option("--args-from", type=click.Path(dir_okay=False), metavar="FILE.jsonl",
              help="Arguments for --task, one call a line: [args] or {\"args\", \"kwargs\"}.")
@click.option("--target-rate", type=click.FloatRange(0, min_open=True), metavar="TASKS/S",
              help="Tasks per second the workers must sustain.")
@click.option("--target-p99", type=click.FloatRange(0, min_open=True), metavar="MS",
              help="Most p99 latency at the target rate, in milliseconds.")
@click.option("--max-cores", type=click.IntRange(1), help="Cores one machine may give [all].")
@click.option("--max-slots", type=click.IntRange(1), default=256,
              help="Largest loop concurrency / sync workers swept [256].")
@click.option("--max-utilisation", type=click.FloatRange(0.1, 0.95), default=0.8,
              help="Most load a worker is planned for, as a share of its capacity [0.8].")
@click.option("--prefetch-multiplier", type=click.IntRange(1),
              help="Prefetch multiplier of the measured workers [4, and 1 is tried].")
@click.option("--budget", type=click.FloatRange(5), default=150.0, metavar="SECONDS",
              help="Time the whole sweep may take [150].")
@click.option("--queue", metavar="NAME", help="Sweep queue, purged [celery-bench-<pid>].")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=60.0,
              metavar="SECONDS", help="Give up when no task has finished for this long [60].")
@click.option("--verify", is_flag=True,
              help="Then measure the recommended worker and compare it with the prediction.")
@click.option("--dry-run", is_flag=True, help="Say what would be measured; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@click.option("--html", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Also write a self-contained HTML page with the sweep's charts.")
@click.pass_obj
def capacity(obj: CLIContext, **opts: Any) -> None:
    """Measure worker settings on the app's broker and recommend the smallest worker that
    meets --target-rate (and --target-p99): a sweep, a fitted model, a recommendation."""
    from ..worker.executor.loop import new_event_loop

    sweep = _prepare(obj, opts)
    if opts["dry_run"]:
        planned = _dry_run(sweep)
        click.echo(json.dumps(planned) if opts["as_json"] else "\n".join(_dry_run_text(planned)))
        return
    if not opts["as_json"] and not obj.quiet:
        click.echo(f"celery capacity: sweeping {sweep.workload.axis} on "
                   f"{mask_url(sweep.app.broker_url)}, {sweep.budget:g} s at most")
    with tempfile.TemporaryDirectory(prefix="celery-capacity-") as tmp:
        try:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(sweep.all(Path(tmp), opts))
        except (KeyboardInterrupt, asyncio.CancelledError) as exc:
            run = sweep.run
            if isinstance(exc, asyncio.CancelledError) and not (run and run.terminated):
                raise
            why = "terminated by SIGTERM" if run and run.terminated else "interrupted"
            raise user_error(f"{why}: {run.stopped_text() if run else 'nothing started'}") \
                from None
    report = sweep.report
    if opts["html"]:
        try:
            Path(opts["html"]).write_text(html_page(report))
        except OSError as exc:
            raise user_error(f"--html {opts['html']}: {exc.strerror}") from None
    click.echo(json.dumps(report) if opts["as_json"] else "\n".join(text_lines(report)))
    rec = report["recommendation"]
    if opts["target_rate"] is not None and not rec["meets_target"]:
        raise user_error(_unreachable(report))


def _unreachable(report: dict[str, Any]) -> str:
    rec, target = report["recommendation"], report["target"]
    p99 = f" with p99 under {target['p99_ms']:g} ms" if target["p99_ms"] else ""
    more = (f"; it needs about {rec['processes_needed']} worker processes"
            f" ({rec['machines_needed']} machines of {target['max_cores']} cores)"
            if rec["processes_needed"] else f"; {_advice(rec['bound'])}")
    predicted = rec["predicted"]
    if target["p99_ms"] and predicted["p99_ms"] is not None and \
            predicted["utilisation"] <= target["max_utilisation"]:
        return (f"no configuration on this machine reaches {target['rate']:g} tasks/s{p99}: "
                f"the fastest ({' '.join(rec['worker_args'])}) serves the rate with a "
                f"predicted p99 of {predicted['p99_ms']:.0f} ms; one task alone takes "
                f"{report['base_latency']['p99_ms']:.0f} ms at p99")
    return (f"no configuration on this machine reaches {target['rate']:g} tasks/s{p99}: the "
            f"best found saturates at {rec['predicted']['throughput_at_saturation']:g} tasks/s "
            f"({' '.join(rec['worker_args'])}), bound by {rec['bound']}{more}")


def _advice(bound: str) -> str:
    """What to do when more worker processes would not help, by what bounds the best point."""
    if bound.startswith("broker"):
        return "more workers on this broker would not help"
    if bound.startswith("this command"):
        return "the measurement was the limit: measure with workers on another machine"
    return "measure on a machine with idle cores"
