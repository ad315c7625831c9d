"""From what a ``celery capacity`` sweep measured to its report: fit the model, choose the
worker, say what bounds it (pure functions on measured points, no I/O)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .model import Candidate, Point, Scaling, fit_scaling, recommend

__all__ = ["AXES", "Measured", "bound", "plan", "unreachable", "worker_args", "worker_settings"]

#: The thread axis the sweep grows, by workload kind.
AXES = {"async": "loop concurrency", "sync": "sync workers",
        "mixed": "loop concurrency = sync workers"}


@dataclass(frozen=True)
class Measured:
    """What a sweep measured, as the planner reads it."""

    #: "async", "sync" or "mixed" (see ``AXES``).
    kind: str
    #: The sweep's points: the thread axis on one process, then more processes.
    points: Sequence[Point]
    #: The best slot count measured again with another prefetch multiplier or loop workers.
    variants: Sequence[Point]
    #: Latencies of tasks sent one at a time, in seconds.
    probe_s: Sequence[float]
    #: The prefetch multiplier of the sweep's points.
    prefetch: int
    free_threaded: bool


def worker_settings(kind: str, slots: int, processes: int = 1, prefetch: int = 4,
                    loop_workers: int = 1) -> dict[str, int]:
    """The ``celery worker`` sizes that give ``slots`` on the axis of ``kind``: loop
    concurrency (spread over ``loop_workers``), sync workers, or both."""
    return {"loop_workers": loop_workers,
            "loop_concurrency": math.ceil(slots / loop_workers) if kind != "sync" else 1,
            "sync_workers": slots if kind != "async" else 1,
            "prefetch_multiplier": prefetch, "processes": processes}


def worker_args(worker: dict[str, int]) -> list[str]:
    """``worker_settings`` as ``celery worker`` options."""
    return [f"--loop-workers={worker['loop_workers']}",
            f"--loop-concurrency={worker['loop_concurrency']}",
            f"--sync-workers={worker['sync_workers']}",
            f"--prefetch-multiplier={worker['prefetch_multiplier']}",
            *([f"--processes={worker['processes']}"] if worker["processes"] > 1 else [])]


def _percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank, in milliseconds, of latencies in seconds."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)] * 1000


def bound(points: Sequence[Point], free_threaded: bool) -> str:
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


def plan(measured: Measured, *, target_rate: float | None, target_p99_ms: float | None,
         max_utilisation: float, max_cores: int) -> dict[str, Any]:
    """Fit the model to what was measured and choose the worker: the report's ``points``,
    ``base_latency``, ``model``, ``target``, ``variants`` and ``recommendation``."""
    points = list(measured.points)
    one = [p for p in points if p.processes == 1]
    threads = fit_scaling([(p.slots, p.throughput) for p in one])
    variants, used = _variants(measured)
    planned = threads if used is None else Scaling(
        threads.lam * used["gain"], threads.sigma, threads.kappa, threads.r2,
        threads.max_error, threads.points)
    best_one = max(one, key=lambda p: p.throughput)
    multi = [(1, best_one.throughput)] + [(p.processes, p.throughput) for p in points
                                          if p.processes > 1]
    processes = fit_scaling(multi) if len(multi) > 1 else None

    def factor(p: int) -> float:
        return processes(p) / processes(1) if processes is not None else 1.0

    base_p50, base_p99 = _percentile(measured.probe_s, 0.5), _percentile(measured.probe_s, 0.99)
    cpu = [p.cpu_per_task_ms for p in points if p.cpu_per_task_ms is not None]
    chosen, meets = recommend(
        planned, factor, max_slots=max(p.slots for p in one),
        max_processes=min(max_cores, max(p for p, _ in multi)) if processes else 1,
        base_p50_ms=base_p50, base_p99_ms=base_p99,
        cpu_per_task_ms=sum(cpu) / len(cpu) if cpu else None,
        target_rate=target_rate, target_p99_ms=target_p99_ms, max_utilisation=max_utilisation)
    limit = bound(points, measured.free_threaded)
    needed = machines = None
    if not meets and target_rate and not limit.startswith(
            ("broker", "this command", "this machine")):
        per_process = max(p.throughput / p.processes for p in points)
        needed = math.ceil(target_rate / (per_process * max_utilisation))
        machines = math.ceil(needed / max_cores)
    top = max(p.slots for p in one)
    saturation_slots = max(range(1, top + 1), key=threads)
    reached = saturation_slots < top or (
        len(one) >= 2 and one[-1].throughput < 1.1 * max(p.throughput for p in one[:-1]))
    return {
        "free_threaded": measured.free_threaded,
        "points": [asdict(p) for p in points],
        "base_latency": {"tasks": len(measured.probe_s), "p50_ms": round(base_p50, 3),
                         "p99_ms": round(base_p99, 3),
                         "measures": "send to result received, one task at a time"},
        "model": {
            "axis": AXES[measured.kind],
            "threads": _scaling_json(threads),
            "processes": _scaling_json(processes) if processes else None,
            "saturation": {"slots": saturation_slots, "reached": reached,
                           "throughput": round(threads(saturation_slots), 1)},
        },
        "target": {"rate": target_rate, "p99_ms": target_p99_ms,
                   "max_utilisation": max_utilisation, "max_cores": max_cores},
        "variants": variants,
        "recommendation": _recommendation_json(measured, chosen, meets, limit, needed,
                                               machines, used),
    }


def _scaling_json(curve: Scaling) -> dict[str, Any]:
    return {"lambda": round(curve.lam, 4), "sigma": round(curve.sigma, 6),
            "kappa": round(curve.kappa, 8), "r2": None if curve.r2 is None else round(curve.r2, 4),
            "max_error": round(curve.max_error, 4), "points": curve.points,
            "formula": curve.describe()}


def _variants(measured: Measured) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each other setting measured, against the sweep's point with the same slots; the one
    used: the best that gained at least 10 % (less is within what two runs of the same
    settings differ by on a busy machine), assumed to gain as much at every slot count."""
    variants: list[dict[str, Any]] = []
    for v in measured.variants:
        base = next(p for p in measured.points if p.processes == 1 and p.slots == v.slots)
        variants.append({
            "setting": f"prefetch multiplier {v.prefetch}" if v.prefetch != base.prefetch
            else f"{v.loop_workers} loop workers",
            "prefetch_multiplier": v.prefetch, "loop_workers": v.loop_workers,
            "slots": v.slots, "throughput": v.throughput, "baseline": base.throughput,
            "gain": round(v.throughput / base.throughput, 4), "used": False})
    best = max(variants, key=lambda v: float(v["gain"]), default=None)
    if best is None or best["gain"] < 1.10:
        return variants, None
    best["used"] = True
    return variants, best


def _recommendation_json(measured: Measured, chosen: Candidate, meets: bool, limit: str,
                         needed: int | None, machines: int | None,
                         used: dict[str, Any] | None) -> dict[str, Any]:
    worker = worker_settings(measured.kind, chosen.slots, chosen.processes,
                             used["prefetch_multiplier"] if used else measured.prefetch,
                             used["loop_workers"] if used else 1)
    latency = chosen.latency
    rate = chosen.rate
    return {
        "meets_target": meets,
        "slots": chosen.slots,
        "worker": worker,
        "worker_args": worker_args(worker),
        "predicted": {
            "throughput_at_saturation": round(chosen.capacity, 1),
            "rate": round(rate, 1),
            "utilisation": round(rate / chosen.capacity, 3),
            "p50_ms": round(latency.p50_ms, 3) if latency else None,
            "p99_ms": round(latency.p99_ms, 3) if latency else None,
            "cpu_cores": round(chosen.cpu_cores, 3) if chosen.cpu_cores is not None else None,
        },
        "bound": limit,
        "processes_needed": needed,
        "machines_needed": machines,
    }


def unreachable(report: dict[str, Any]) -> str:
    """The one line that says a target is out of reach: the best found, and why."""
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


def _advice(limit: str) -> str:
    """What to do when more worker processes would not help, by what bounds the best point."""
    if limit.startswith("broker"):
        return "more workers on this broker would not help"
    if limit.startswith("this command"):
        return "the measurement was the limit: measure with workers on another machine"
    return "measure on a machine with idle cores"
