"""bench/peers.py and bench/peers/report.py: medians of the rounds, with their spread."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_each_floor_is_its_own_median_over_the_rounds():
    rounds = [
        {"client": "redis-py", "p50_ms": 0.019, "p99_ms": 0.024, "queue_p50_ms": 0.126,
         "queue_p99_ms": 0.185},
        {"client": "redis-py", "p50_ms": 0.030, "p99_ms": 0.037, "queue_p50_ms": 0.068,
         "queue_p99_ms": 0.178},
        {"client": "redis-py", "p50_ms": 0.025, "p99_ms": 0.040, "queue_p50_ms": 0.070,
         "queue_p99_ms": 0.300},
    ]
    floors = load_peers()._median_ping(rounds)
    assert (floors["p50_ms"], floors["p99_ms"]) == (0.025, 0.037)
    assert (floors["queue_p50_ms"], floors["queue_p99_ms"]) == (0.070, 0.185)
    assert floors["rounds"] == rounds
    assert load_peers()._median_ping([]) == {}


def test_report_takes_medians_skips_failed_rounds_and_divides_like_with_like():
    report = load_peers().report

    def run(rate: float, cpu: float) -> dict:
        burst = {"tasks": 10, "tasks_per_s": rate, "total_cpu_us_per_task": cpu}
        return {"version": "v", "call": burst, "latency": {"p50_ms": 1000 / rate}}

    ours = report.summarize([run(900, 100), run(1000, 90), {"error": "x"}, run(1200, 80)])
    peer = report.summarize([run(100, 900), run(300, 700), run(200, 800)])
    assert ours["good_rounds"] == 3
    assert ours["call"]["tasks_per_s"] == {"median": 1000, "min": 900, "max": 1200, "n": 3}
    assert report.cell(ours["call"]["tasks_per_s"]) == "1,000 [900..1,200]"
    assert report.medians(peer)["call"] == {"tasks_per_s": 200, "total_cpu_us_per_task": 800}
    results = {"ours": {"summary": ours}, "peer": {"summary": peer}}
    ratios = report.ratios(results, "ours")["peer"]
    assert ratios["call.tasks_per_s"] == 5.0
    assert ratios["call.total_cpu_us_per_task"] == 90 / 800
    assert ratios["kb1.tasks_per_s"] is None  # not measured: no ratio made up
    assert report.summarize([{"error": "x"}]) is None
