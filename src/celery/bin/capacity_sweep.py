"""The measuring side of ``celery capacity``: each point a ``celery worker`` started, kept
saturated and stopped by ``celery bench``'s runner, bounded in time; the sweep that chooses
the points within the time budget.

Threads: as in ``celery bench``, the whole sweep (every measured point, the progress bar, the
supervision of each worker process) runs on one event loop on the main thread, so the
sweep's state needs no lock. Each point is a ``celery worker`` child process that the
bench's ``_Run`` starts, stops and whose queue it purges before the next point starts.
"""

from __future__ import annotations

import asyncio
import math
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import states
from ..capacity import Point
from ..capacity.plan import AXES, worker_settings
from .base import CLIContext, user_error
from .bench import Plan, _ChildWorker, _Output, _Run

if TYPE_CHECKING:
    from ..app.base import Celery
    from ..result import AsyncResult

__all__ = ["POINT_TASK_CAP", "Config", "Sweep", "Workload"]

#: Most tasks one point may send (a bound, not a goal: points are bounded in time).
POINT_TASK_CAP = 200_000
#: Seconds a point is assumed to cost beyond its measured time before one was measured.
START_GUESS_S = 3.0


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
        return AXES[self.kind]


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
        worker = worker_settings(kind, slots, self.processes, self.prefetch, self.loop_workers)
        return replace(
            base, loop_workers=worker["loop_workers"],
            loop_concurrency=worker["loop_concurrency"], sync_workers=worker["sync_workers"],
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
