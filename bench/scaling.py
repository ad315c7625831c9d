"""Scaling with threads: tasks/s for 1, 2, ... N worker threads, on a GIL and a free-threaded build.

    .venv/bin/python bench/scaling.py --rounds 3 --json scaling.json
    .venv/bin/python bench/scaling.py --threads 1,2,4,8,16 --workloads sync-cpu,async-cpu,noop
    .venv/bin/python bench/scaling.py --python gil=.venv/bin/python --tasks-per-thread 30

Every point is one ``<python> -m celery -A suiteapp bench --json`` run (src/celery/bin/bench.py:
a real worker process, every result stored in Redis and awaited) of one workload at one thread
count, in one interpreter (``--python NAME=PATH``, repeatable; by default this checkout's
``.venv`` (``gil``) and ``.venv-ft`` (``ft``, the free-threaded build of ci/ft-test.sh) when it
is there). The workloads:

* ``sync-cpu``: ``def`` tasks burning ``--cpu-ms`` of CPU; N sync workers, no loop worker;
* ``async-cpu``: ``async def`` tasks burning ``--cpu-ms`` of CPU (half before and half after
  an ``await asyncio.sleep(--io-ms)``); N loop workers, no sync worker;
* ``noop``: ``def`` tasks doing nothing; N sync workers (the per-task overhead).

Each point sends ``--tasks-per-thread`` x N tasks (by default enough for ``--seconds`` of CPU
work per thread), so that all points last about as long on an ideal machine. Rounds are
interleaved: every round runs every point, each (workload, threads) with the interpreters back
to back, in reverse order every other round, so that the machine's load hits all alike. The
figure of a point is its **best round** (highest tasks/s: load only ever slows a run down);
the median is kept too. Speed-up is a point's tasks/s over the same interpreter's and
workload's at one thread.

The worker's GIL: ``bench/benchapp.py`` writes the worker's interpreter and
``sys._is_gil_enabled()`` when the worker is ready and when it shuts down (``worker_ready``,
``worker_shutdown``) to the file in ``$BENCH_WORKER_INFO``; each point records what its worker
wrote, so a free-threaded build whose GIL came back on shows as such.

Writes a table to stdout, everything to ``--json PATH`` (perf/record.py reads it), and each
point as a pyperf benchmark (seconds per task, worker CPU seconds per task; one run per round)
in one pyperf file per interpreter under ``--pyperf DIR``:
``python -m pyperf compare_to DIR/gil.json DIR/ft.json``. Redis database 13 by default
(``--url``); every queue is named ``perf-suite-...`` and deleted after each point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "suite"))
from common import (  # noqa: E402  (bench/suite is not a package)
    ROOT,
    ChildFailed,
    Collector,
    Measured,
    Tree,
    child_env,
    delete_suite_keys,
    run_json,
)
from units import THROUGHPUT, CeleryBenchUnit, Profile  # noqa: E402

DEFAULT_URL = "redis://127.0.0.1:6379/13"
TOOL = "bench/scaling.py"

#: What the interpreter is, asked once per interpreter after importing what a worker imports.
PROBE = """
import json, platform, sys, sysconfig
import celery.bin.celery, celery.transport.redis, celery.backends.redis  # noqa: E401
check = getattr(sys, "_is_gil_enabled", None)
print(json.dumps({
    "executable": sys.executable,
    "version": platform.python_version(),
    "implementation": platform.python_implementation(),
    "compiler": platform.python_compiler(),
    "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    "gil_enabled": True if check is None else bool(check()),
}))
"""


@dataclass(frozen=True)
class Workload:
    """One kind of task, scaled by one kind of worker thread."""

    name: str
    about: str
    #: ``celery bench`` options for ``threads`` threads, given the parsed arguments.
    options: Callable[[int, argparse.Namespace], list[str]]
    #: CPU milliseconds per task (sizes the points), given the parsed arguments.
    cpu_ms: Callable[[argparse.Namespace], float]


WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            "sync-cpu",
            "`def` tasks burning {cpu_ms:g} ms of CPU; N sync workers, no loop worker",
            lambda n, a: ["--mix", "0", "--cpu-ms", f"{a.cpu_ms:g}", "--loop-workers", "0",
                          "--sync-workers", str(n)],
            lambda a: a.cpu_ms,
        ),
        Workload(
            "async-cpu",
            "`async def` tasks burning {cpu_ms:g} ms of CPU around an await of {io_ms:g} ms; "
            "N loop workers x {loop_concurrency}, no sync worker",
            lambda n, a: ["--mix", "1", "--async-cpu-ms", f"{a.cpu_ms:g}", "--io-ms",
                          f"{a.io_ms:g}", "--loop-workers", str(n), "--loop-concurrency",
                          str(a.loop_concurrency), "--sync-workers", "0"],
            lambda a: a.cpu_ms,
        ),
        Workload(
            "noop",
            "`def` tasks doing nothing; N sync workers, no loop worker",
            lambda n, a: ["--mix", "0", "--loop-workers", "0", "--sync-workers", str(n)],
            lambda a: 0.0,
        ),
    )
}


# --- one point -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpreter:
    """A Python to measure, as the probe found it."""

    name: str  #: what --python named it (``gil``, ``ft``)
    python: Path
    facts: dict[str, Any]

    @property
    def label(self) -> str:
        f = self.facts
        if not f.get("free_threaded"):
            return f"{f.get('implementation', 'Python')} {f.get('version', '?')} (GIL build)"
        gil = "GIL on" if f.get("gil_enabled") else "GIL off"
        return f"{f.get('implementation', 'Python')} {f.get('version', '?')} (free-threaded, {gil})"


def probe(name: str, python: Path, url: str) -> Interpreter:
    facts = run_json([str(python), "-c", PROBE], child_env(url), timeout=120)
    return Interpreter(name, python, facts)


def tasks_for(workload: Workload, threads: int, args: argparse.Namespace) -> int:
    """Tasks of one point: ``--tasks-per-thread``, else ``--seconds`` of CPU work per thread."""
    per_thread = args.tasks_per_thread
    if per_thread is None:
        cpu_ms = workload.cpu_ms(args)
        per_thread = math.ceil(args.seconds * 1000 / cpu_ms) if cpu_ms else args.noop_tasks
    return per_thread * threads


def worker_facts(path: Path) -> dict[str, Any]:
    """What the point's worker wrote into $BENCH_WORKER_INFO (bench/benchapp.py)."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return {"worker_gil": None}
    events = {line.get("event"): line for line in lines}
    last = events.get("shutdown") or events.get("ready") or {}
    gil = [line["gil_enabled"] for line in lines if "gil_enabled" in line]
    return {
        "worker_gil": None if not gil else "on" if any(gil) else "off",
        "worker_python": last.get("version"),
        "worker_events": sorted(e for e in events if e),
    }


def run_point(interp: Interpreter, workload: Workload, threads: int,
              args: argparse.Namespace) -> dict[str, Any]:
    """One ``celery bench`` run; its figures, or ``{"error": ...}`` after ``--attempts``."""
    tasks = tasks_for(workload, threads, args)
    unit = CeleryBenchUnit(
        f"scaling.{workload.name}", (), needs_redis=True,
        options=tuple(workload.options(threads, args)),
    )
    profile = Profile("scaling", rounds=1, values=1, warmups=0, min_time=0.0, tasks=tasks,
                      latency_samples=0)
    # The longest a point may take: every task's CPU on one thread, three times over.
    timeout = 120 + 3 * tasks * max(workload.cpu_ms(args), 0.5) / 1000
    failures: list[str] = []
    for _ in range(args.attempts):
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
            info = Path(tmp) / "worker.jsonl"
            env = child_env(args.url) | {"BENCH_WORKER_INFO": str(info)}
            load = os.getloadavg()[0]
            try:
                report = run_json(unit.argv(Tree(interp.name, interp.python), profile), env,
                                  timeout)
            except ChildFailed as exc:
                failures.append(" ".join(str(exc).split())[:1000])
                log(f"  {interp.name} {workload.name} {threads} threads: attempt failed: "
                    f"{failures[-1][:300]}")
                continue
            finally:
                delete_suite_keys(args.url)
            if report.get("failed"):
                failures.append(f"{report['failed']} tasks failed")
                continue
            return {
                "tasks": report["tasks"],
                "tasks_per_s": report["throughput_per_s"],
                "elapsed_s": report["elapsed_s"],
                "cpu_us_per_task": report["cpu_per_task_us"],
                "latency_p50_ms": report["latency_p50_ms"],
                "producer_busy": report["producer_busy"],
                "loadavg_1m_before": round(load, 2),
                **worker_facts(info),
                "failed_attempts": failures,
                "report": report,
            }
    return {"error": failures[-1] if failures else "no attempt", "failed_attempts": failures}


# --- rounds and figures --------------------------------------------------------------------------


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_rounds(interps: list[Interpreter], args: argparse.Namespace,
               collectors: dict[str, Collector]) -> dict[tuple[str, str, int], list[dict]]:
    """Every point once per round, interleaved; stops early (keeping what is done) on Ctrl-C."""
    workloads = [WORKLOADS[w] for w in args.workloads]
    order = [(w, t, i) for w in workloads for t in args.threads for i in interps]
    rounds: dict[tuple[str, str, int], list[dict]] = {
        (i.name, w.name, t): [] for w, t, i in order}
    try:
        for r in range(1, args.rounds + 1):
            for workload, threads, interp in order if r % 2 else reversed(order):
                t0 = time.monotonic()
                result = run_point(interp, workload, threads, args) | {"round": r}
                rounds[(interp.name, workload.name, threads)].append(result)
                if "error" in result:
                    log(f"round {r}/{args.rounds} {workload.name:9} {threads:2} threads "
                        f"{interp.name:4}: FAILED {result['error']}")
                    continue
                add_pyperf(collectors[interp.name], interp, workload, threads, result)
                log(f"round {r}/{args.rounds} {workload.name:9} {threads:2} threads "
                    f"{interp.name:4}: {result['tasks_per_s']:7.0f} tasks/s, worker GIL "
                    f"{result['worker_gil']}, load {result['loadavg_1m_before']:.1f} "
                    f"({time.monotonic() - t0:.0f} s)")
    except KeyboardInterrupt:
        log("interrupted: reporting the rounds done so far")
    return rounds


def add_pyperf(collector: Collector, interp: Interpreter, workload: Workload, threads: int,
               result: dict[str, Any]) -> None:
    """The round as one pyperf run of each of the point's benchmarks."""
    unit = CeleryBenchUnit(
        "", tuple(f"scaling.{workload.name}.t{threads:02d}.{m}" for m in THROUGHPUT),
        needs_redis=True,
    )
    facts = interp.facts
    metadata = {
        "threads": threads,
        "workload": workload.name,
        "tasks": result["tasks"],
        "worker_gil": str(result["worker_gil"]),
        "python_version": f"{facts.get('version')}"
                          f"{' free-threaded' if facts.get('free_threaded') else ''}",
        "python_implementation": str(facts.get("implementation", "")).lower(),
        "python_compiler": str(facts.get("compiler", "")),
    }
    collector.add(Measured(unit.metrics(result["report"]), {}, ""), metadata)


def summarize(interp: Interpreter, workload: Workload, threads: int, rounds: list[dict],
              args: argparse.Namespace) -> dict[str, Any]:
    """A point's entry: its best round's figures, the median, all its rounds."""
    good = [r for r in rounds if "error" not in r]
    point: dict[str, Any] = {"interpreter": interp.name, "workload": workload.name,
                             "task_cpu_ms": workload.cpu_ms(args), "threads": threads}
    if not good:
        errors = [r["error"] for r in rounds if "error" in r]
        return point | {"error": errors[-1] if errors else "not run", "rounds": rounds}
    best = max(good, key=lambda r: r["tasks_per_s"])
    gil = {r["worker_gil"] for r in good}
    return point | {
        "tasks": best["tasks"],
        "tasks_per_s": best["tasks_per_s"],
        "median_tasks_per_s": statistics.median(r["tasks_per_s"] for r in good),
        "speedup": None,
        "median_speedup": None,
        "cpu_us_per_task": best["cpu_us_per_task"],
        "elapsed_s": best["elapsed_s"],
        "worker_gil": "on" if "on" in gil else "off" if gil == {"off"} else None,
        "worker_python": best.get("worker_python"),
        "good_rounds": len(good),
        "rounds": [{k: v for k, v in r.items() if k != "report"} for r in rounds],
    }


def points_of(interps: list[Interpreter], rounds: dict, args: argparse.Namespace) -> list[dict]:
    """Every point summarized; speed-ups over the same interpreter and workload at 1 thread
    (best over best, median over median), when 1 thread was measured."""
    points = []
    for interp in interps:
        for name in args.workloads:
            curve = [summarize(interp, WORKLOADS[name], threads,
                               rounds[(interp.name, name, threads)], args)
                     for threads in args.threads]
            base = next((p for p in curve if p["threads"] == 1 and "error" not in p), None)
            for point in curve:
                if base is not None and "error" not in point:
                    point["speedup"] = point["tasks_per_s"] / base["tasks_per_s"]
                    point["median_speedup"] = point["median_tasks_per_s"] / \
                        base["median_tasks_per_s"]
            points.extend(curve)
    return points


# --- output --------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table(full: dict[str, Any]) -> str:
    meta, interps = full["meta"], full["interpreters"]
    lines = [
        f"Scaling with threads: best of {meta['rounds']} round(s) per point (median in "
        f"brackets), {meta['cpus']} CPUs, load {meta['loadavg_1m_before']:.1f} before, "
        f"{meta['loadavg_1m_after']:.1f} after"
    ]
    for name in meta["workloads"]:
        lines += ["", f"{name}: {meta['workload_about'][name]}"]
        lines.append(f"  {'interpreter':44} {'threads':>7} {'tasks':>6} {'tasks/s':>16} "
                     f"{'speed-up':>16} {'CPU/task':>10} {'worker GIL':>10}")
        for point in full["points"]:
            if point["workload"] != name:
                continue
            label = interps[point["interpreter"]]["label"]
            head = f"  {label:44} {point['threads']:7}"
            if "error" in point:
                lines.append(f"{head} FAILED: {point['error']}")
                continue
            rate = f"{point['tasks_per_s']:.0f} ({point['median_tasks_per_s']:.0f})"
            speedup = (f"{_fmt(point['speedup'], '.2f', 'x')} "
                       f"({_fmt(point['median_speedup'], '.2f', 'x')})")
            lines.append(f"{head} {point['tasks']:6} {rate:>16} {speedup:>16} "
                         f"{_fmt(point['cpu_us_per_task'], ',.0f', ' µs'):>10} "
                         f"{point['worker_gil'] or '?':>10}")
    return "\n".join(lines)


def parse_pythons(values: list[str] | None) -> list[tuple[str, Path]]:
    """``NAME=PATH`` pairs; by default .venv (``gil``) and .venv-ft (``ft``) when it exists."""
    if values:
        pairs = []
        for value in values:
            name, sep, path = value.partition("=")
            if not sep or not name or not path:
                raise SystemExit(f"--python {value}: give NAME=PATH, e.g. ft=.venv-ft/bin/python")
            pairs.append((name, Path(path).absolute()))  # children run in bench/suite
        return pairs
    pairs = [("gil", ROOT / ".venv" / "bin" / "python")]
    ft = ROOT / ".venv-ft" / "bin" / "python"
    if ft.exists():
        pairs.append(("ft", ft))
    else:
        log(f"no {ft.relative_to(ROOT)} (bash ci/ft-test.sh makes it): the GIL build only")
    return pairs


def default_threads() -> list[int]:
    """1, 2, 4, ... up to the CPU count, and the CPU count itself."""
    cpus = os.cpu_count() or 1
    counts = [1 << k for k in range(cpus.bit_length()) if 1 << k <= cpus]
    return sorted(set(counts) | {cpus, 1, 2})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", metavar="NAME=PATH",
                        help="an interpreter to measure (repeatable) [gil=.venv/bin/python, "
                             "ft=.venv-ft/bin/python when it exists]")
    parser.add_argument("--threads", help="comma-separated thread counts [1,2,4,... CPU count]")
    parser.add_argument("--workloads", default="sync-cpu,async-cpu",
                        help=f"comma-separated, from: {','.join(WORKLOADS)} [sync-cpu,async-cpu]")
    parser.add_argument("--cpu-ms", type=float, default=5.0,
                        help="CPU milliseconds each sync-cpu and async-cpu task burns [5]")
    parser.add_argument("--io-ms", type=float, default=1.0,
                        help="milliseconds each async-cpu task awaits [1]")
    parser.add_argument("--loop-concurrency", type=int, default=100,
                        help="async tasks at once per loop worker [100]")
    parser.add_argument("--seconds", type=float, default=2.5,
                        help="CPU seconds of work per thread in each point [2.5]")
    parser.add_argument("--tasks-per-thread", type=int,
                        help="tasks per thread in each point [from --seconds]")
    parser.add_argument("--noop-tasks", type=int, default=2000,
                        help="noop tasks per thread in each point [2000]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attempts", type=int, default=2,
                        help="tries per point and round (a shared Redis may drop a connection)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis for broker and results "
                        f"[{DEFAULT_URL}]")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write everything here")
    parser.add_argument("--pyperf", type=Path, metavar="DIR",
                        default=ROOT / ".cache" / "bench-scaling",
                        help="pyperf files, one per interpreter [.cache/bench-scaling]")
    args = parser.parse_args(argv)
    try:
        args.threads = sorted({int(t) for t in args.threads.split(",")}) if args.threads \
            else default_threads()
    except ValueError:
        parser.error(f"--threads {args.threads}: comma-separated whole numbers")
    if not args.threads or args.threads[0] < 1:
        parser.error("--threads: counts of 1 or more")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown or not args.workloads:
        parser.error(f"--workloads {','.join(sorted(unknown))}: known are {','.join(WORKLOADS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.time(), os.getloadavg()[0]
    interps = [probe(name, python, args.url) for name, python in parse_pythons(args.python)]
    for interp in interps:
        log(f"{interp.name}: {interp.label} ({interp.python})")
    collectors = {i.name: Collector(Tree(i.name, i.python)) for i in interps}
    rounds = run_rounds(interps, args, collectors)
    about = {w: WORKLOADS[w].about.format(**vars(args)) for w in args.workloads}
    full = {
        "meta": {
            "tool": TOOL,
            "command": shlex.join([sys.executable, *sys.argv]) if argv is None
            else shlex.join([TOOL, *argv]),
            "threads": args.threads,
            "workloads": args.workloads,
            "workload_about": about,
            "cpu_ms": args.cpu_ms,
            "io_ms": args.io_ms,
            "loop_concurrency": args.loop_concurrency,
            "rounds": args.rounds,
            "statistic": "best",
            "url": args.url,
            "cpus": os.cpu_count(),
            "started": started,
            "seconds": round(time.time() - started, 1),
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
        "interpreters": {i.name: {"python": str(i.python), "label": i.label, **i.facts}
                         for i in interps},
        "points": points_of(interps, rounds, args),
        "pyperf": {},
    }
    for name, collector in collectors.items():
        path = args.pyperf / f"{name}.json"
        if collector.dump(path):
            full["pyperf"][name] = str(path)
    print(table(full))
    if args.json:
        args.json.write_text(json.dumps(full, indent=2) + "\n")
    return 0 if all("error" not in p for p in full["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
