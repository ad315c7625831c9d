"""``celery capacity``'s reading of a sweep, without running one: what bounds the best point,
and the recommendation built from measured points (processes included)."""

from __future__ import annotations

import sysconfig
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from celery.bin.bench import Plan
from celery.bin.capacity import build_report
from celery.bin.capacity_sweep import Workload
from celery.capacity import Point, fit_scaling
from celery.capacity.plan import bound, unreachable


def point(slots: int, throughput: float, processes: int = 1, cores: float | None = 0.2,
          producer: float = 0.2, machine: float | None = 0.5) -> Point:
    return Point(slots=slots, processes=processes, prefetch=4, loop_workers=1,
                 throughput=throughput, tasks=int(throughput * 2),
                 cpu_per_task_ms=1000 * cores / throughput if cores is not None else None,
                 worker_cores=cores, producer_busy=producer, machine_busy=machine,
                 p50_ms=50.0, p99_ms=90.0)


def test_each_bound_is_named_from_the_best_point() -> None:
    growing = [point(1, 50), point(2, 100), point(4, 200)]
    assert bound(growing, False).startswith("the task itself")
    flat = [point(1, 500), point(2, 520, cores=0.3)]
    assert bound(flat, False).startswith("broker round trips") and "(30% of a core)" in bound(flat, False)
    busy = [point(1, 300, cores=0.95), point(2, 310, cores=0.97)]
    assert bound(busy, False).startswith("the GIL: each worker process ran Python on about one core")
    assert bound(busy, True) == "worker CPU (0.97 cores busy)"
    producer = [point(1, 900, producer=0.95), point(2, 950, producer=0.97)]
    assert bound(producer, False).startswith("this command's producer")
    crowded = [point(1, 60, machine=0.99), point(2, 62, machine=0.98)]
    assert bound(crowded, False).startswith("this machine's CPUs: 98% of all")


def sweep(points: list[Point], target: float | None, variants: list[Point] | None = None
          ) -> tuple[Any, dict[str, Any]]:
    base = Plan(tasks=1, io_ms=20.0, cpu_ms=0.0, async_cpu_ms=0.0, mix=1.0, payload_bytes=0,
                in_flight=1, queue="celery-bench-1", timeout=60.0, results=True,
                worker_mode="process", loop_workers=1, loop_concurrency=1, sync_workers=1,
                prefetch_multiplier=4)
    fake = SimpleNamespace(
        points=points, probe=[0.03] * 19 + [0.06], workload=Workload("async"), base=base,
        app=SimpleNamespace(broker_url="redis://:secret@localhost/1",
                            conf=SimpleNamespace(result_backend="redis://localhost/2")),
        purged=True, budget=20.0, notes=[], spent=lambda: 12.5, variants=variants or [],
        prefetch=4)  # what build_report reads of a Sweep
    opts = {"target_rate": target, "target_p99": None, "max_utilisation": 0.8, "max_cores": 4}
    return fake, opts


def test_more_processes_are_recommended_when_one_is_cpu_bound() -> None:
    points = [point(1, 100, cores=0.5), point(2, 180, cores=0.9), point(4, 190, cores=0.95),
              point(4, 370, processes=2, cores=1.9)]
    report = build_report(*sweep(points, 250.0))
    rec = report["recommendation"]
    assert rec["meets_target"] and rec["worker"]["processes"] == 2
    assert "--processes=2" in rec["worker_args"]
    assert report["model"]["processes"]["points"] == 2
    assert rec["predicted"]["throughput_at_saturation"] * 0.8 >= 250
    assert report["broker"] == "redis://:**@localhost/1"  # the password masked
    assert report["base_latency"] == {"tasks": 20, "p50_ms": 30.0, "p99_ms": 60.0,
                                      "measures": "send to result received, one task at a "
                                                  "time"}


def test_a_target_beyond_the_machine_counts_processes_and_machines() -> None:
    points = [point(1, 100, cores=0.9), point(2, 105, cores=0.95)]
    report = build_report(*sweep(points, 1000.0))
    rec = report["recommendation"]
    # one core busy per process: the GIL on a GIL build, the worker's CPU on a free-threaded one
    gil_off = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert not rec["meets_target"]
    assert rec["bound"].startswith("worker CPU" if gil_off else "the GIL"), rec["bound"]
    # 105 tasks/s a process at 80 %: 1000 / 84 -> 12 processes, 3 machines of 4 cores.
    assert (rec["processes_needed"], rec["machines_needed"]) == (12, 3)
    assert report["model"]["saturation"]["reached"] is True


def test_a_broker_bound_target_needs_no_more_workers() -> None:
    points = [point(1, 500, cores=0.3), point(2, 510, cores=0.3)]
    rec = build_report(*sweep(points, 5000.0))["recommendation"]
    assert not rec["meets_target"] and rec["bound"].startswith("broker round trips")
    assert rec["processes_needed"] is None and rec["machines_needed"] is None


@pytest.mark.parametrize("target", [None, 80.0])
def test_the_report_predicts_latency_at_the_planned_rate(target: float | None) -> None:
    points = [point(1, 50), point(2, 100), point(4, 200)]
    rec = build_report(*sweep(points, target))["recommendation"]
    predicted = rec["predicted"]
    assert rec["meets_target"] and predicted["utilisation"] <= 0.8
    assert 30.0 <= predicted["p50_ms"] <= predicted["p99_ms"]
    assert predicted["rate"] == (target if target else round(0.8 * 200, 1))


def test_a_setting_that_gains_is_used_and_one_that_does_not_is_shown() -> None:
    points = [point(1, 50), point(2, 95), point(4, 150)]
    fewer = replace(point(4, 180), prefetch=1)  # +20 %: used
    loops = replace(point(4, 162), loop_workers=2)  # +8 %: shown, not used
    report = build_report(*sweep(points, 100.0, [fewer, loops]))
    assert [(v["setting"], v["gain"], v["used"]) for v in report["variants"]] == [
        ("prefetch multiplier 1", 1.2, True), ("2 loop workers", 1.08, False)]
    rec = report["recommendation"]
    assert rec["worker"]["prefetch_multiplier"] == 1 and rec["worker"]["loop_workers"] == 1
    assert "--prefetch-multiplier=1" in rec["worker_args"]
    # The sweep's curve, scaled by the gain, at the slot count chosen.
    curve = fit_scaling([(p.slots, p.throughput) for p in points])
    assert rec["predicted"]["throughput_at_saturation"] == pytest.approx(
        1.2 * curve(rec["slots"]), abs=0.1)
    assert 1.2 * curve(rec["slots"]) * 0.8 >= 100 > 1.2 * curve(rec["slots"] - 1) * 0.8


def test_a_p99_out_of_reach_is_said_to_be_the_latency_not_the_rate() -> None:
    points = [point(1, 50), point(2, 100), point(4, 200)]
    fake, opts = sweep(points, 80.0)
    opts["target_p99"] = 50.0  # one task alone already takes 60 ms at p99
    report = build_report(fake, opts)
    assert report["recommendation"]["meets_target"] is False
    assert unreachable(report) == (
        "no configuration on this machine reaches 80 tasks/s with p99 under 50 ms: the "
        "fastest (--loop-workers=1 --loop-concurrency=4 --sync-workers=1 "
        "--prefetch-multiplier=4) serves the rate with a predicted p99 of "
        f"{report['recommendation']['predicted']['p99_ms']:.0f} ms; one task alone takes "
        "60 ms at p99")
    _, opts_rate = sweep(points, 1000.0)
    assert unreachable(build_report(fake, opts_rate)).startswith(
        "no configuration on this machine reaches 1000 tasks/s: the best found saturates at "
        "200 tasks/s (--loop-workers=1 --loop-concurrency=4 ")
