"""The capacity model: a scalability curve fitted to measured throughput, the queueing estimate
of latency at a load, and the choice of the smallest configuration that meets a target.

Pure functions on plain numbers, no I/O: ``celery capacity`` measures, this module reasons.

- Throughput against slots (loop concurrency or sync workers) follows the Universal
  Scalability Law, ``X(n) = λn / (1 + σ(n-1) + κn(n-1))``: λ the rate of one slot, σ the
  share that serialises (a core, the GIL, a broker connection), κ the cost of coordination
  that makes throughput fall past a peak. It is fitted by weighted least squares on its
  linear form ``n/X = a + b(n-1) + c·n(n-1)``.
- Latency at an arrival rate comes from an M/M/c queue (Erlang C) whose c servers are the
  worker's slots, each busy ``c / X(n)`` seconds a task at saturation (Little's law), added
  to the latency measured one task at a time (the broker and result round trips).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Candidate",
    "LatencyPrediction",
    "Point",
    "Scaling",
    "erlang_c",
    "fit_scaling",
    "predict_latency",
    "recommend",
]


@dataclass(frozen=True)
class Point:
    """One measured sweep point: a worker started with these settings, kept saturated."""

    #: The swept thread axis: loop concurrency, sync workers, or both (a mixed workload).
    slots: int
    processes: int
    prefetch: int
    loop_workers: int
    #: Tasks per second finished while the worker was saturated (the steady window).
    throughput: float
    tasks: int
    #: Worker CPU (user+system, all its processes) per task; None where not measurable.
    cpu_per_task_ms: float | None
    #: CPU cores the worker kept busy; None where not measurable.
    worker_cores: float | None
    #: Share of the time this command's producer thread was busy (near 1: it is the limit).
    producer_busy: float
    #: Share of all this machine's cores busy meanwhile, every process counted (/proc/stat).
    machine_busy: float | None
    #: Latency percentiles under saturation (they include the wait in the in-flight window).
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Scaling:
    """A fitted Universal Scalability Law curve and how well it fits the measured points."""

    lam: float
    sigma: float
    kappa: float
    #: Coefficient of determination on the measured throughputs (None under 3 points).
    r2: float | None
    #: Largest relative gap between the curve and a measured point.
    max_error: float
    points: int

    def __call__(self, n: float) -> float:
        return self.lam * n / (1 + self.sigma * (n - 1) + self.kappa * n * (n - 1))

    @property
    def peak(self) -> float | None:
        """The ``n`` of the highest throughput; None when the curve never falls (κ = 0)."""
        if self.kappa <= 0:
            return None
        return math.sqrt(max(1 - self.sigma, 0) / self.kappa) if self.sigma < 1 else 1.0

    def describe(self) -> str:
        fit = (f"R² {self.r2:.3f}, " if self.r2 is not None else "") + \
            f"worst point off by {self.max_error:.0%}"
        return (f"X(n) = {self.lam:.4g}·n / (1 + {self.sigma:.3g}(n-1) + {self.kappa:.3g}n(n-1)) "
                f"on {self.points} {'point' if self.points == 1 else 'points'}: {fit}")


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular system."""
    size = len(rhs)
    rows = [row[:] + [value] for row, value in zip(matrix, rhs, strict=True)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-300:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(size):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [rows[i][size] / rows[i][i] for i in range(size)]


def _least_squares(points: Sequence[tuple[float, float]], terms: tuple[bool, bool]
                   ) -> tuple[float, float, float] | None:
    """Fit ``n/X = a + b(n-1) + c·n(n-1)`` with the terms switched on; weights ``X²/n`` make
    the residuals those of X itself. Returns ``(a, b, c)`` or None."""
    basis: list[Callable[[float], float]] = [lambda n: 1.0]
    if terms[0]:
        basis.append(lambda n: n - 1)
    if terms[1]:
        basis.append(lambda n: n * (n - 1))
    if len(points) < len(basis):
        return None
    k = len(basis)
    ata, atb = [[0.0] * k for _ in range(k)], [0.0] * k
    for n, x in points:
        weight = (x * x / n) ** 2
        row = [f(n) for f in basis]
        for i in range(k):
            atb[i] += weight * row[i] * (n / x)
            for j in range(k):
                ata[i][j] += weight * row[i] * row[j]
    solution = _solve(ata, atb)
    if solution is None:
        return None
    a, rest = solution[0], iter(solution[1:])
    b = next(rest) if terms[0] else 0.0
    c = next(rest) if terms[1] else 0.0
    return a, b, c


def fit_scaling(points: Sequence[tuple[float, float]]) -> Scaling:
    """Fit the USL to ``(n, throughput)`` points (n ≥ 1, throughput > 0). σ and κ are kept
    non-negative: of the fits with any of them, the one closest to the points wins.

    Raises:
        ValueError: no point, or a point that is not positive.
    """
    if not points:
        raise ValueError("no measured point to fit")
    if any(n < 1 or x <= 0 for n, x in points):
        raise ValueError(f"points must have n >= 1 and a positive throughput: {list(points)}")
    best: Scaling | None = None
    for terms in ((True, True), (True, False), (False, True), (False, False)):
        coefficients = _least_squares(points, terms)
        if coefficients is None:
            continue
        a, b, c = coefficients
        if a <= 0 or b < -1e-12 or c < -1e-12:
            continue
        curve = Scaling(1 / a, max(b / a, 0.0), max(c / a, 0.0), None, 0.0, len(points))
        scored = _with_quality(curve, points)
        if best is None or _sse(scored, points) < _sse(best, points) - 1e-12:
            best = scored
    assert best is not None  # the one-term fit always exists for positive points
    return best


def _sse(curve: Scaling, points: Sequence[tuple[float, float]]) -> float:
    return sum((curve(n) - x) ** 2 for n, x in points)


def _with_quality(curve: Scaling, points: Sequence[tuple[float, float]]) -> Scaling:
    mean = sum(x for _, x in points) / len(points)
    total = sum((x - mean) ** 2 for _, x in points)
    r2 = 1 - _sse(curve, points) / total if len(points) >= 3 and total > 0 else None
    worst = max(abs(curve(n) - x) / x for n, x in points)
    return Scaling(curve.lam, curve.sigma, curve.kappa, r2, worst, len(points))


# -- latency ----------------------------------------------------------------------------------


def erlang_c(servers: int, load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with ``servers`` servers and
    offered ``load`` (arrival rate × service time, in servers); 1.0 at or past saturation."""
    if servers < 1:
        raise ValueError(f"servers must be at least 1, not {servers}")
    if load >= servers:
        return 1.0
    blocking = 1.0  # Erlang B by its stable recursion
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    rho = load / servers
    return blocking / (1 - rho * (1 - blocking))


@dataclass(frozen=True)
class LatencyPrediction:
    """Latency at ``rate`` tasks/s on a configuration that saturates at ``capacity``."""

    rate: float
    capacity: float
    utilisation: float
    #: Probability that a task waits for a free slot.
    p_wait: float
    p50_ms: float
    p99_ms: float


def predict_latency(rate: float, capacity: float, slots: int, base_p50_ms: float,
                    base_p99_ms: float) -> LatencyPrediction | None:
    """Latency percentiles at ``rate``: those measured one task at a time (``base_*``) plus
    the M/M/c wait for one of ``slots`` slots, each serving ``capacity / slots`` tasks/s.
    None at or past saturation (the queue grows without bound)."""
    if rate >= capacity or capacity <= 0:
        return None
    service = slots / capacity
    p_wait = erlang_c(slots, rate * service) if rate > 0 else 0.0
    drain = slots / service - rate  # rate at which a queue empties: cμ - λ

    def wait_ms(q: float) -> float:
        return 1000 * math.log(p_wait / (1 - q)) / drain if p_wait > 1 - q else 0.0

    return LatencyPrediction(rate, capacity, rate / capacity, p_wait,
                             base_p50_ms + wait_ms(0.5), base_p99_ms + wait_ms(0.99))


# -- the recommendation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One configuration the model predicts for: its saturation throughput, and its latency
    and CPU at the target rate (or at ``max_utilisation`` of its capacity without one)."""

    slots: int
    processes: int
    capacity: float
    #: The rate it is planned for: the target, else ``max_utilisation`` of its capacity.
    rate: float
    latency: LatencyPrediction | None
    #: CPU cores the worker would use at that rate (CPU per task × rate).
    cpu_cores: float | None
    meets: bool


def recommend(threads: Scaling, process_factor: Callable[[int], float], *, max_slots: int,
              max_processes: int, base_p50_ms: float, base_p99_ms: float,
              cpu_per_task_ms: float | None, target_rate: float | None,
              target_p99_ms: float | None, max_utilisation: float) -> tuple[Candidate, bool]:
    """The configuration to use, and whether it meets the targets.

    Candidates: every slot count from 1 to ``max_slots`` (the measured range: the curve is
    not trusted beyond it) times 1 to ``max_processes`` processes, capacity
    ``threads(n) × process_factor(p)``. With a target rate, the cheapest that serves it at
    no more than ``max_utilisation`` and within ``target_p99_ms`` wins: fewest processes
    (each holds a core), then fewest slots; CPU per task is the same work in each, so the
    CPU used at the target rate follows. When none meets it, the one with the highest
    capacity is returned with False. Without a target rate, the smallest slot count within
    5 % of the highest capacity on one process (the knee of the curve), loaded to
    ``max_utilisation`` (its p99 within ``target_p99_ms`` when given).
    """
    def candidate(n: int, p: int, rate: float | None) -> Candidate:
        capacity = threads(n) * process_factor(p)
        at = rate if rate is not None else capacity * max_utilisation
        cores = cpu_per_task_ms * at / 1000 if cpu_per_task_ms is not None else None
        if at > capacity * max_utilisation + 1e-9:  # cheap, before the Erlang C sum
            return Candidate(n, p, capacity, at, None, cores, False)
        latency = predict_latency(at, capacity, n * p, base_p50_ms, base_p99_ms)
        meets = latency is not None and (
            target_p99_ms is None or latency.p99_ms <= target_p99_ms)
        return Candidate(n, p, capacity, at, latency, cores, meets)

    if target_rate is None:
        best = max(threads(n) for n in range(1, max_slots + 1))
        knee = next(n for n in range(1, max_slots + 1) if threads(n) >= 0.95 * best)
        chosen = candidate(knee, 1, None)
        return chosen, chosen.meets
    for p in range(1, max_processes + 1):
        for n in range(1, max_slots + 1):
            chosen = candidate(n, p, target_rate)
            if chosen.meets:
                return chosen, True
    n_best = max(range(1, max_slots + 1), key=threads)
    p_best = max(range(1, max_processes + 1), key=process_factor)
    return candidate(n_best, p_best, target_rate), False
