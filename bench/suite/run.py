"""Run the benchmark suite (or part of it) and write pyperf JSON files.

    .venv/bin/python bench/suite/run.py --fast                 # everything, short (~1 min)
    .venv/bin/python bench/suite/run.py --only micro --out /tmp/micro
    .venv/bin/python bench/suite/run.py --only e2e.mixed_l1s2,e2e.mixed_l2s4 --rounds 3
    .venv/bin/python -m pyperf show .cache/bench-suite/latest/micro.json

Writes one pyperf file per group (micro.json, enqueue.json, e2e.json) to --out. The
end-to-end units use Redis database 9 (``--url``); they purge their queues, delete their
results and stop their workers, also when a run fails. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import (
    DEFAULT_URL,
    ROOT,
    ChildFailed,
    Collector,
    Measured,
    Tree,
    delete_suite_keys,
    redis_up,
)
from timing import matches, split_patterns
from units import PROFILES, UNITS, Profile, Unit, select

GROUPS = ("micro", "enqueue", "e2e")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_rounds(trees: Sequence[Tree], units: Sequence[Unit], profile: Profile, only: list[str],
               url: str, rounds: int, say: Callable[[str], None] = log) -> dict[str, Collector]:
    """Every unit ``rounds`` times for every tree, interleaved: for each round and unit the
    trees run back to back, first in the given order, then reversed (A B, B A, A B, ...), so
    that all trees see the same machine load and no tree always runs right after another."""
    collectors = {tree.label: Collector(tree) for tree in trees}
    try:
        for r in range(rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for unit in units:
                for tree in order:
                    t0 = time.monotonic()
                    try:
                        measured = unit.run(tree, profile, only, url)
                    except ChildFailed as exc:
                        measured = Measured({}, dict.fromkeys(unit.benchmarks, str(exc)))
                    measured.results = {n: v for n, v in measured.results.items()
                                        if matches(n, only)}
                    collectors[tree.label].add(measured)
                    say(f"  round {r + 1}/{rounds} {unit.name:16} {tree.label:8} "
                        f"{time.monotonic() - t0:5.1f} s")
    finally:
        if any(u.needs_redis for u in units):
            delete_suite_keys(url)
    return collectors


def usable_units(only: list[str], url: str, say: Callable[[str], None] = log) -> list[Unit]:
    """The selected units, less those that need Redis when it does not answer at ``url``."""
    units = select(only)
    if any(u.needs_redis for u in units) and not redis_up(url):
        say(f"Redis does not answer at {url}: skipping "
            + ", ".join(u.name for u in units if u.needs_redis))
        units = [u for u in units if not u.needs_redis]
    return units


def summary(collector: Collector) -> list[str]:
    lines = []
    for name, bench in sorted(collector.benchmarks.items()):
        values = bench.get_values()
        spread = f" +- {bench.format_value(bench.stdev())}" if len(values) > 1 else ""
        lines.append(f"{name:40} {bench.format_value(bench.mean()):>12}{spread:14} "
                     f"({len(values)} values)")
    lines += [f"{name:40} {collector.failures[name]} failed or skipped runs, the last: {why}"
              for name, why in sorted(collector.skipped.items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated benchmark or unit names, "
                        "globs or prefixes (micro, e2e.latency, 'micro.json_*') [all]")
    parser.add_argument("--fast", action="store_true", help="a quick run: fewer rounds and tasks")
    parser.add_argument("--rounds", type=int, help="child runs of each unit [5; --fast 2]")
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench-suite" / "latest",
                        help="folder for the pyperf JSON files [.cache/bench-suite/latest]")
    parser.add_argument("--python", type=Path, default=Path(sys.executable),
                        help="the Python of the tree to measure [this one]")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis for end-to-end [{DEFAULT_URL}]")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    only = split_patterns(args.only)
    if args.list:
        for unit in UNITS:
            print("\n".join(n for n in unit.benchmarks if matches(n, only)))
        return 0
    profile = PROFILES["fast" if args.fast else "full"]
    units = usable_units(only, args.url)
    if not units:
        log("nothing to run")
        return 1
    tree = Tree("current", args.python)
    t0 = time.monotonic()
    collector = run_rounds([tree], units, profile, only, args.url, args.rounds or profile.rounds)[tree.label]
    written = [f"{args.out / group}.json" for group in GROUPS
               if collector.dump(args.out / f"{group}.json", prefix=f"{group}.")]
    print("\n".join(summary(collector)))
    print(f"{time.monotonic() - t0:.0f} s; pyperf files: {', '.join(written) or 'none'}")
    return 0 if collector.benchmarks else 1


if __name__ == "__main__":
    sys.exit(main())
