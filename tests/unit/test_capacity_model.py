"""The capacity model: the scalability fit, Erlang C, the latency estimate, the choice of a
configuration, and the reports built from them (no broker, no worker)."""

from __future__ import annotations

import math
import re
import xml.dom.minidom
from typing import Any

import pytest

from celery.capacity import erlang_c, fit_scaling, predict_latency, recommend
from celery.capacity.model import Scaling
from celery.capacity.report import html_page, text_lines


def usl(lam: float, sigma: float, kappa: float) -> Scaling:
    return Scaling(lam, sigma, kappa, None, 0.0, 0)


def test_the_fit_recovers_the_curve_that_made_the_points() -> None:
    truth = usl(50.0, 0.05, 0.002)
    fit = fit_scaling([(n, truth(n)) for n in (1, 2, 4, 8, 16, 32)])
    assert fit.lam == pytest.approx(50.0, rel=1e-6)
    assert fit.sigma == pytest.approx(0.05, rel=1e-6)
    assert fit.kappa == pytest.approx(0.002, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.max_error < 1e-9
    assert fit.peak == pytest.approx(math.sqrt(0.95 / 0.002))
    assert "on 6 points: R² 1.000" in fit.describe()


def test_linear_points_fit_without_contention() -> None:
    fit = fit_scaling([(1, 45.0), (2, 90.0), (4, 180.0)])
    assert (fit.sigma, fit.kappa) == (pytest.approx(0, abs=1e-9), pytest.approx(0, abs=1e-9))
    assert fit(3) == pytest.approx(135.0)
    assert fit.peak is None


def test_a_plateau_fits_with_serialisation() -> None:
    fit = fit_scaling([(1, 95.0), (2, 100.0), (4, 98.0), (8, 90.0)])
    assert fit.sigma > 0.5  # most of the work serialises
    assert fit(16) < 100  # and the curve does not climb past what was measured


def test_the_fit_states_how_far_it_is_from_noisy_points() -> None:
    points = [(1, 40.0), (2, 95.0), (4, 150.0), (8, 330.0)]
    fit = fit_scaling(points)
    worst = max(abs(fit(n) - x) / x for n, x in points)
    assert fit.max_error == pytest.approx(worst)
    assert fit.r2 is not None and 0.8 < fit.r2 < 1.0


def test_one_point_is_a_line_with_no_fit_quality() -> None:
    fit = fit_scaling([(4, 100.0)])
    assert fit(4) == pytest.approx(100.0) and fit.r2 is None
    assert "on 1 point: worst point off by 0%" in fit.describe()


@pytest.mark.parametrize("points", [[], [(0, 10.0)], [(1, 0.0)]])
def test_the_fit_refuses_what_it_cannot_fit(points: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError):
        fit_scaling(points)


def test_erlang_c_matches_known_queues() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: the utilisation
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(10, 10.0) == 1.0  # saturated: every arrival waits
    assert erlang_c(100, 50.0) < 1e-6  # half-loaded large pool: almost nobody waits
    with pytest.raises(ValueError):
        erlang_c(0, 0.1)


def test_latency_at_no_load_is_the_measured_one_and_grows_with_load() -> None:
    idle = predict_latency(0.0, 100.0, 4, 20.0, 40.0)
    assert idle is not None and (idle.p50_ms, idle.p99_ms) == (20.0, 40.0)
    p99s = [predict_latency(rate, 100.0, 4, 20.0, 40.0).p99_ms  # type: ignore[union-attr]
            for rate in (20, 50, 80, 95, 99)]
    assert p99s == sorted(p99s) and p99s[-1] > 10 * p99s[0]
    assert predict_latency(100.0, 100.0, 4, 20.0, 40.0) is None


def test_one_slot_waits_as_an_m_m_1_queue() -> None:
    # M/M/1, λ = 8/s, μ = 10/s: P(wait > t) = ρ e^{-(μ-λ)t}, so the p99 wait is ln(ρ/0.01)/2 s.
    latency = predict_latency(8.0, 10.0, 1, 0.0, 0.0)
    assert latency is not None and latency.p_wait == pytest.approx(0.8)
    assert latency.p99_ms == pytest.approx(1000 * math.log(0.8 / 0.01) / 2)
    assert latency.p50_ms == pytest.approx(1000 * math.log(0.8 / 0.5) / 2)


def choose(target: float | None, p99: float | None = None, processes: int = 1,
           factor: Any = lambda p: float(p)) -> tuple[Any, bool]:
    return recommend(usl(50.0, 0.0, 0.0), factor, max_slots=8, max_processes=processes,
                     base_p50_ms=20.0, base_p99_ms=40.0, cpu_per_task_ms=2.0,
                     target_rate=target, target_p99_ms=p99, max_utilisation=0.8)


def test_the_smallest_worker_that_serves_the_target_at_the_utilisation_cap() -> None:
    chosen, meets = choose(100.0)
    assert meets and (chosen.slots, chosen.processes) == (3, 1)  # 150/s: 67 % busy; 2: 100 %
    assert chosen.capacity == pytest.approx(150.0) and chosen.rate == 100.0
    assert chosen.cpu_cores == pytest.approx(0.2)  # 2 ms a task at 100 tasks/s
    assert chosen.latency is not None and chosen.latency.utilisation == pytest.approx(2 / 3)


def test_a_p99_target_asks_for_more_slots() -> None:
    loose, _ = choose(100.0)
    assert loose.latency is not None
    tight, meets = choose(100.0, p99=loose.latency.p99_ms - 1)
    assert meets and tight.slots > loose.slots
    assert tight.latency is not None and tight.latency.p99_ms < loose.latency.p99_ms


def test_processes_are_added_only_when_slots_are_not_enough() -> None:
    chosen, meets = choose(500.0, processes=4)
    assert meets and chosen.processes == 2 and chosen.slots == 7  # 8 slots × 1: 400/s max


def test_an_unreachable_target_returns_the_best_and_says_so() -> None:
    chosen, meets = choose(10_000.0, processes=2)
    assert not meets and (chosen.slots, chosen.processes) == (8, 2)
    assert chosen.capacity == pytest.approx(800.0) and chosen.latency is None


def test_without_a_target_the_knee_of_the_curve() -> None:
    fit = usl(100.0, 0.9, 0.0)  # flattens fast: 100, 105, 107, ...
    chosen, meets = recommend(fit, lambda p: 1.0, max_slots=16, max_processes=1,
                              base_p50_ms=5.0, base_p99_ms=9.0, cpu_per_task_ms=None,
                              target_rate=None, target_p99_ms=None, max_utilisation=0.8)
    best = max(fit(n) for n in range(1, 17))
    assert meets and fit(chosen.slots) >= 0.95 * best > fit(chosen.slots - 1)
    assert chosen.rate == pytest.approx(0.8 * chosen.capacity)


# -- reports --------------------------------------------------------------------------------


def sample_report(meets: bool = True) -> dict[str, Any]:
    fit = fit_scaling([(1, 45.0), (2, 90.0), (4, 170.0)])
    point = {"slots": 1, "processes": 1, "prefetch": 4, "loop_workers": 1, "throughput": 45.0,
             "tasks": 100, "cpu_per_task_ms": 1.0, "worker_cores": 0.05, "producer_busy": 0.1,
             "machine_busy": 0.3, "p50_ms": 80.0, "p99_ms": 120.0}
    return {
        "workload": {"kind": "async", "task": None, "io_ms": 20.0},
        "broker": "sqlite:///celery-broker.db", "queue": "celery-bench-1", "purged": True,
        "elapsed_s": 12.0, "notes": ["a note"],
        "points": [point | {"slots": n, "throughput": x} for n, x in ((1, 45.), (2, 90.),
                                                                         (4, 170.))],
        "base_latency": {"tasks": 30, "p50_ms": 25.0, "p99_ms": 40.0},
        "model": {"axis": "loop concurrency",
                  "threads": {"lambda": fit.lam, "sigma": fit.sigma, "kappa": fit.kappa,
                              "r2": fit.r2, "max_error": fit.max_error, "points": 3,
                              "formula": fit.describe()},
                  "processes": None,
                  "saturation": {"slots": 4, "throughput": 170.0, "reached": False}},
        "target": {"rate": 100.0, "p99_ms": 250.0, "max_utilisation": 0.8, "max_cores": 2},
        "recommendation": {
            "meets_target": meets, "slots": 3,
            "worker": {"loop_workers": 1, "loop_concurrency": 3, "sync_workers": 1,
                       "prefetch_multiplier": 4, "processes": 1},
            "worker_args": ["--loop-workers=1", "--loop-concurrency=3"],
            "predicted": {"throughput_at_saturation": 131.0, "rate": 100.0,
                          "utilisation": 0.76, "p50_ms": 30.0, "p99_ms": 150.0,
                          "cpu_cores": 0.1},
            "bound": "the task itself", "processes_needed": None if meets else 3,
            "machines_needed": None if meets else 2},
    }


def test_the_text_report_names_the_recommendation_and_the_fit() -> None:
    lines = "\n".join(text_lines(sample_report()))
    assert "recommend   celery worker --loop-workers=1 --loop-concurrency=3" in lines
    assert "saturates at 131 tasks/s; at 100 tasks/s (76% busy): p50 30.0 ms, p99 150.0 ms" \
        in lines
    assert "on 3 points: R² " in lines and "saturation  not reached" in lines
    assert "100 tasks/s, p99 under 250 ms at most 80% busy: met" in lines
    assert "note        a note" in lines
    unmet = "\n".join(text_lines(sample_report(meets=False)))
    assert "NOT met" in unmet and "needs about 3 worker processes: 2 machine(s)" in unmet


def test_the_html_page_is_self_contained_with_two_charts() -> None:
    page = html_page(sample_report())
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert re.sub(r'xmlns="http://www\.w3\.org/2000/svg"', "", page).count("http") == 0
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2
    for svg in svgs:
        xml.dom.minidom.parseString(svg)  # well-formed
    assert "<title>recommended: 3</title>" in svgs[0]
    assert svgs[0].count("<circle") == 3  # the measured points
    assert 'stroke="#2ca02c"' in svgs[1]  # the target rate marked on the latency chart
