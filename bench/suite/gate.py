"""Performance regression gate: the working tree against the last commit that passed it here.

    bash ci/perf-gate.sh                      # what CI runs (after the tests passed)
    bash ci/perf-gate.sh --base v0.1.0        # or PERF_GATE_BASE=<rev>: compare with that
    .venv/bin/python bench/suite/gate.py --aa # the working tree against itself (noise)

The base is the nearest ancestor of HEAD that passed the gate on this machine and build
(perf/gate-passes.txt and the machine's copy of it, bench/suite/passes.py), so slowdowns
just under a threshold cannot pile up commit after commit; with no such record, the merge
base with origin/main or HEAD~1, saying so. A pass of a clean HEAD is added to the record.

Builds the base commit (basevenv.py: ``git archive`` into a temporary folder, ``pip
install`` into the throwaway venv ``.cache/perf-gate/venv``, or ``.cache/perf-gate-ft/venv``
when run by a free-threaded python, kept for the next run with the same dependency pins),
then runs the gate's benchmarks for both trees interleaved in one run (run.py's
``run_rounds``), compares each benchmark with pyperf's t-test, and fails only when the
working tree is significantly slower by more than the benchmark's threshold, twice: a
benchmark that fails is measured again (both trees, interleaved, the same rounds) and fails
the gate only if it fails that second time too. When nothing the benchmarks run differs
from the base (``CODE_PATHS``: a change to docs only), there is nothing to measure and the
gate is skipped. Exit status: 0 passed or skipped (nothing to measure or to compare with),
1 regression, 2 a wrong --base, --only or record, 3 could not measure: the base cannot be
built, or Redis does not answer and the end-to-end units would be dropped (the gate never
passes by leaving its benchmarks out). docs/performance.md explains the thresholds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import passes
import pyperf
from basevenv import CACHE, FREE_THREADED, build_base
from common import DEFAULT_URL, ROOT, Collector, Tree, redis_up
from run import log, run_rounds
from timing import matches, split_patterns
from units import PROFILES, Unit, select

#: What the gate runs: every micro benchmark, the enqueue rate, no-op throughput (and worker
#: CPU per task) and single-task latency. The mixed workloads are left to run.py.
GATE_BENCHMARKS = ("micro", "enqueue", "e2e.noop_sync", "e2e.latency")

#: (glob, threshold): a benchmark fails the gate when the working tree is significantly
#: slower than the base and its best run is slower than the base's best by more than this
#: fraction; None: reported only. The first glob that matches applies. Set from nine A/A
#: runs on the 2-core CI machine (the same tree on both sides; the largest difference of
#: the best runs is in the comments), with a margin: see docs/performance.md.
THRESHOLDS: tuple[tuple[str, float | None], ...] = (
    ("e2e.latency.latency_p99", 1.50),  # A/A: up to 117 % (13 runs, load up to 9)
    ("enqueue.delay", 1.00),  # A/A: up to 52 % (bimodal: 170 or 250-300 µs a call)
    ("enqueue.delay_confirmed", 1.00),  # bimodal too (33 or 71 µs a call, issue 20)
    ("e2e.*.time_per_task", 0.40),  # A/A: up to 27 %
    ("e2e.*.worker_cpu_per_task", 0.50),  # A/A: up to 40 %
    ("e2e.*", 0.35),  # latency p50, A/A: up to 19 %
    ("enqueue.*", 0.25),  # adelay_x100, A/A: up to 5.4 %
    ("micro.*", 0.15),  # A/A: up to 4.8 %
)
#: Fewer runs than this on either side: no verdict (a t-test on 2 runs says little).
MIN_RUNS = 4
#: What the benchmarks run: a tree that differs from the base elsewhere only is not measured.
CODE_PATHS = ("src", "bench/suite", "pyproject.toml")


# -- which commit ----------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str | None:
    """``git args`` in ``repo``: its output, or None when it fails."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def select_base(repo: Path, override: str | None = None) -> tuple[str | None, str]:
    """The commit to compare with, and why that one.

    ``override`` (a revision) when given; else the merge base of HEAD and origin/main when
    there is one and it is not HEAD (a branch is compared with where it left main); else
    HEAD~1. ``(None, reason)`` when there is no such commit (a repository of one commit, a
    shallow clone).

    Raises:
        ValueError: ``override`` names no commit.
    """
    if override:
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{override}^{{commit}}")
        if not sha:
            raise ValueError(f"{override!r} is not a commit of {repo}")
        return sha, f"{override} (given)"
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if not head:
        return None, "the repository has no commit yet"
    if _git(repo, "rev-parse", "--verify", "--quiet", "origin/main^{commit}"):
        base = _git(repo, "merge-base", "HEAD", "origin/main")
        if base and base != head:
            return base, "the merge base of HEAD and origin/main"
    parent = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")
    if parent:
        return parent, "HEAD~1"
    return None, "HEAD has no parent commit (first commit or shallow clone)"


def same_code(repo: Path, sha: str, paths: Sequence[str] = CODE_PATHS) -> bool:
    """True when the working tree of ``repo`` has ``paths`` as in commit ``sha``: no change
    to a tracked file there, and no untracked one."""
    diff = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", sha, "--", *paths],
                          capture_output=True)
    if diff.returncode != 0:
        return False
    untracked = _git(repo, "ls-files", "--others", "--exclude-standard", "--", *paths)
    return untracked == ""


# -- the verdict -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """The comparison of one benchmark. Each side is a sample of one figure per child run
    (``run_figures``); ``base`` and ``current`` are the samples' minima, the best runs."""

    name: str
    base: float | None  #: best run of the base tree (seconds)
    current: float | None
    #: current / base of the best runs (above 1: the working tree is slower)
    ratio: float | None
    #: current / base of the sample means
    mean_ratio: float | None
    significant: bool
    threshold: float | None
    status: str  #: REGRESSION, BROKEN, MISSING, slower, faster, same, too few runs, new, info

    @property
    def fails(self) -> bool:
        return self.status in ("REGRESSION", "BROKEN", "MISSING")


def threshold_for(name: str, thresholds: Sequence[tuple[str, float | None]] = THRESHOLDS
                  ) -> float | None:
    return next((limit for glob, limit in thresholds if matches(name, [glob])), None)


def run_figures(bench: pyperf.Benchmark) -> list[float]:
    """One figure per child run: its fastest value. Values of one process hang together
    (same CPU, same memory layout, same neighbours' load), so the runs, not the values, are
    the independent observations; and load on a shared machine only ever adds time, so the
    fastest value is the one least disturbed by it (as timeit reports the best)."""
    return [min(run.values) for run in bench.get_runs() if run.values]


def _disturbed(figures: Sequence[float]) -> int:
    """How many runs load slowed down throughout: figures above Tukey's upper fence (third
    quartile + 1.5 interquartile ranges). Load only ever adds time: only slow ones count."""
    if len(figures) < 4:
        return 0
    q1, _, q3 = statistics.quantiles(figures, n=4, method="inclusive")
    return sum(f > q3 + 1.5 * (q3 - q1) for f in figures)


def samples(base: Sequence[float], current: Sequence[float]) -> tuple[list[float], list[float]]:
    """The two samples the t-test compares: the ``m`` fastest runs of each side, ``m`` being
    the smaller side's count less the most disturbed runs of either side (at least 3). The
    same size on both sides, as pyperf's t-test needs; and one disturbed run, far out,
    would otherwise hide any difference from it."""
    m = max(min(len(base), len(current)) - max(_disturbed(base), _disturbed(current)), 3)
    return sorted(base)[:m], sorted(current)[:m]


def significant(base: Sequence[float], current: Sequence[float]) -> bool:
    """pyperf's two-sample Student t-test at 95 % (the one ``pyperf compare_to`` uses)."""
    from pyperf._utils import is_significant

    return bool(is_significant(list(base), list(current))[0])


def compare(base: pyperf.Benchmark | None, current: pyperf.Benchmark | None, name: str,
            threshold: float | None, min_runs: int = MIN_RUNS) -> Row:
    """Verdict on one benchmark. The base has it and the working tree lost it (every run
    failed): BROKEN. The runs differ significantly (t-test), the working tree's mean is
    higher and its best run is slower than the base's best by more than ``threshold`` (a
    fraction): REGRESSION. Both fail the gate. Noise on a shared machine only ever adds
    time, so the best runs are the steadiest estimate of the code's own cost."""
    b = run_figures(base) if base is not None else []
    c = run_figures(current) if current is not None else []
    if not c:
        status = "BROKEN" if b else "MISSING"
        return Row(name, min(b, default=None), None, None, None, False, threshold, status)
    if not b:
        return Row(name, None, min(c), None, None, False, threshold, "new")
    sb, sc = samples(b, c)
    ratio, mean_ratio = min(c) / min(b), statistics.fmean(sc) / statistics.fmean(sb)
    row = Row(name, min(b), min(c), ratio, mean_ratio, False, threshold, "too few runs")
    if min(len(b), len(c)) < min_runs:
        return row
    sig = significant(sb, sc)
    if not sig:
        status = "same"
    elif mean_ratio < 1:
        status = "faster"
    elif threshold is None:
        status = "info"
    else:
        status = "REGRESSION" if ratio > 1 + threshold else "slower"
    return replace(row, significant=sig, status=status)


def decide(base: dict[str, pyperf.Benchmark], current: dict[str, pyperf.Benchmark],
           thresholds: Sequence[tuple[str, float | None]] = THRESHOLDS,
           min_runs: int = MIN_RUNS, expected: Sequence[str] = ()) -> list[Row]:
    """One row per benchmark of either side or of ``expected``, sorted by name. An expected
    benchmark that neither side measured (every run of both failed) is ``MISSING``: it
    fails, as the gate cannot judge what it did not measure."""
    return [compare(base.get(n), current.get(n), n, threshold_for(n, thresholds), min_runs)
            for n in sorted(set(base) | set(current) | set(expected))]


def confirmed(failed: list[str], measure_again: Callable[[list[str]], list[Row]]) -> list[str]:
    """The benchmarks of ``failed`` that fail again when ``measure_again`` measures them: a
    regression shows twice, a disturbance of the shared machine seldom does."""
    return [r.name for r in measure_again(failed) if r.fails and r.name in failed]


def report(rows: Sequence[Row], base: Collector, current: Collector) -> list[str]:
    def fmt(bench: pyperf.Benchmark | None, value: float | None) -> str:
        return bench.format_value(value) if bench is not None and value is not None else "-"

    def pct(ratio: float | None) -> str:
        return f"{(ratio - 1) * 100:+.1f}%" if ratio is not None else "-"

    lines = [f"{'benchmark':36} {'base best':>10} {'current':>10} {'best':>7} {'mean':>7} "
             f"{'limit':>5}  verdict"]
    for r in rows:
        limit = f"+{r.threshold * 100:.0f}%" if r.threshold is not None else "-"
        lines.append(f"{r.name:36} {fmt(base.benchmarks.get(r.name), r.base):>10} "
                     f"{fmt(current.benchmarks.get(r.name), r.current):>10} {pct(r.ratio):>7} "
                     f"{pct(r.mean_ratio):>7} {limit:>5}  {r.status}")
        if r.status in ("BROKEN", "MISSING"):
            why = current.skipped.get(r.name) or base.skipped.get(r.name, "")
            lines.append(f"{'':36}   {why[:300]}")
    return lines


# -- the command -------------------------------------------------------------------------------


#: Exit status when the gate cannot measure (the base does not build, Redis is down).
CANNOT_MEASURE = 3


class Skip(Exception):
    """The gate stops before measuring: ``code`` is its exit status, the message says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def choose_base(repo: Path, override: str | None, record: Path, key: str,
                machine: Path | None = None) -> tuple[str | None, str]:
    """The commit to compare with, and why that one: ``override`` when given; else the
    nearest ancestor of HEAD recorded in ``record`` or in the machine's copy ``machine`` as
    passed for ``key``; else ``select_base``'s fallback, saying that no pass is recorded.

    Raises:
        ValueError: ``override`` names no commit, or a record has a malformed line.
    """
    if override:
        return select_base(repo, override)
    records = [record] + ([machine] if machine is not None else [])
    recorded = passes.last_pass(repo, [p for path in records for p in passes.read(path)], key)
    names = " or ".join(str(path) if path is machine else path.name for path in records)
    if recorded:
        return recorded, f"the last commit that passed the gate on {key} ({names})"
    sha, why = select_base(repo)
    return sha, f"{why}; no pass recorded for {key} in {names} below HEAD"


def base_commit(args: argparse.Namespace) -> tuple[str, str]:
    """The base commit to measure (``""`` for an A/A run), and a description of it.

    Raises:
        Skip: nothing to compare with or nothing to measure (exit 0), or ``--base`` or the
            record is wrong (exit 2).
    """
    if args.aa:
        return "", "the working tree (A/A run)"
    try:
        sha, why = choose_base(args.repo, args.base, args.record, args.key,
                               args.machine_record)
    except ValueError as exc:
        raise Skip(2, f"perf gate: {exc}") from None
    if sha is None:
        raise Skip(0, f"perf gate: skipped: {why}; nothing to compare with")
    what = f"{sha[:12]} ({why})"
    if same_code(args.repo, sha):
        raise Skip(0, f"perf gate: skipped: {', '.join(CODE_PATHS)} as in {what}; "
                   f"nothing to measure")
    return sha, what


def base_tree(args: argparse.Namespace, sha: str, what: str, python: Path) -> Tree:
    """The base tree: ``sha`` built (the working tree itself for an A/A run).

    Raises:
        Skip: the base cannot be built (exit 3: a gate that cannot measure fails).
    """
    if not sha:
        return Tree("base", python)
    log(f"perf gate: building {what} into {CACHE / 'venv'}")
    try:
        return Tree("base", build_base(args.repo, sha, python))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise Skip(CANNOT_MEASURE, f"perf gate: FAILED: could not build the base commit "
                   f"{what}: {exc}; nothing was measured (fix the build or the network, or "
                   f"name another base with --base)") from None


def gate_units(only: list[str], url: str) -> list[Unit]:
    """The units to run.

    Raises:
        Skip: the selection names no unit (exit 2), or some need Redis and it does not
            answer at ``url`` (exit 3: leaving them out would pass without measuring them).
    """
    units = select(only)
    if not units:
        raise Skip(2, f"perf gate: --only {','.join(only)!r} selects no benchmark")
    needing = [u.name for u in units if u.needs_redis]
    if needing and not redis_up(url):
        raise Skip(CANNOT_MEASURE, f"perf gate: FAILED: Redis does not answer at {url}: "
                   f"{', '.join(needing)} cannot run (start Redis; --only leaves units out "
                   f"on purpose)")
    return units


def expected(units: Sequence[Unit], only: list[str]) -> list[str]:
    """The benchmarks the units must measure: one that neither tree measured has no verdict."""
    return [n for u in units for n in u.benchmarks if matches(n, only)]


def record_pass(args: argparse.Namespace) -> str:
    """Add HEAD to the record when the gate judged it: not an A/A run, a base taken from the
    record or its fallback (not ``--base``), and the code measured was HEAD's. Says what
    was done."""
    if args.aa or args.base or not args.record_passes:
        return "not recorded (an A/A run, a given --base or --no-record)"
    head = subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--verify", "--quiet",
                           "HEAD^{commit}"], capture_output=True, text=True).stdout.strip()
    if not head or not same_code(args.repo, head):
        return (f"not recorded: {', '.join(CODE_PATHS)} differ from HEAD (commit, then run "
                f"the gate again to record a pass)")
    entry = passes.append(args.record, args.key, head)
    where = str(args.record)
    if args.machine_record is not None:
        try:
            passes.append(args.machine_record, args.key, head)
            where += f" and {args.machine_record}"
        except OSError as exc:  # a cache folder we may not write: the committed record holds
            where += f" (not in {args.machine_record}: {exc})"
    return f"recorded {head[:12]} as passed for {entry.key} in {where}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=os.environ.get("PERF_GATE_BASE") or None,
                        help="revision to compare with [$PERF_GATE_BASE, else the merge base "
                        "with origin/main, else HEAD~1]")
    parser.add_argument("--aa", action="store_true",
                        help="compare the working tree with itself (measures the noise)")
    parser.add_argument("--no-confirm", dest="confirm", action="store_false",
                        help="fail at once, without measuring a failed benchmark again")
    parser.add_argument("--rounds", type=int, default=PROFILES["gate"].rounds)
    parser.add_argument("--only", default=",".join(GATE_BENCHMARKS),
                        help="benchmarks to run [%(default)s]")
    parser.add_argument("--url", default=DEFAULT_URL, help="Redis for end-to-end [%(default)s]")
    parser.add_argument("--repo", type=Path, default=ROOT,
                        help="the repository whose history gives the base [this one]")
    parser.add_argument("--out", type=Path, default=CACHE / "last",
                        help="folder for base.json and current.json [%(default)s]")
    parser.add_argument("--record", type=Path, default=passes.RECORD,
                        help="the record of passes the base is taken from [%(default)s]")
    parser.add_argument("--machine-record", type=lambda v: Path(v) if v else None,
                        default=passes.MACHINE_RECORD,
                        help="this machine's copy of the record, read and added to as well "
                        "(empty: none) [$PERF_GATE_MACHINE_RECORD, else %(default)s]")
    parser.add_argument("--no-record", dest="record_passes", action="store_false",
                        help="do not add this pass to the record")
    args = parser.parse_args(argv)
    args.key = passes.machine_key(FREE_THREADED)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, python = time.monotonic(), Path(sys.executable)
    only = split_patterns(args.only)
    try:
        sha, what = base_commit(args)
        units = gate_units(only, args.url)
        base_side = base_tree(args, sha, what, python)
    except Skip as skip:
        log(str(skip))
        return skip.code
    log(f"perf gate: base ready after {time.monotonic() - started:.0f} s")
    log(f"perf gate: {len(units)} units x {args.rounds} rounds x 2 trees, interleaved")
    collected = run_rounds([base_side, Tree("current", python)], units, PROFILES["gate"], only,
                           args.url, args.rounds)
    base, current = collected["base"], collected["current"]
    base.dump(args.out / "base.json")
    current.dump(args.out / "current.json")
    rows = decide(base.benchmarks, current.benchmarks, expected=expected(units, only))
    print(f"perf gate: working tree ({current.celery or 'src'}) against {what}")
    print("\n".join(report(rows, base, current)))
    print(f"perf gate: {time.monotonic() - started:.0f} s; pyperf files in {args.out} "
          f"(.venv/bin/python -m pyperf compare_to {args.out}/base.json {args.out}/current.json)")
    failed = [r.name for r in rows if r.fails]
    if failed and args.confirm:
        log(f"perf gate: {', '.join(failed)} failed; measuring again to confirm")

        def again(names: list[str]) -> list[Row]:
            patterns = split_patterns(",".join(names))
            trees = [base_side, Tree("current", python)]
            again_units = select(patterns)
            second = run_rounds(trees, again_units, PROFILES["gate"], patterns, args.url,
                                args.rounds)
            rows = decide(second["base"].benchmarks, second["current"].benchmarks,
                          expected=expected(again_units, patterns))
            print("perf gate: measured again:")
            print("\n".join(report(rows, second["base"], second["current"])))
            return rows

        failed = confirmed(failed, again)
    if failed:
        print(f"perf gate: FAILED: {', '.join(failed)}")
        return 1
    print("perf gate: passed")
    print(f"perf gate: {record_pass(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
