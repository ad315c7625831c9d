"""Times benchmark functions in this process and prints one JSON line (standard library only).

A benchmark is a context manager factory: entering it sets up (imports, data, connections)
and yields a *time function* with pyperf's ``bench_time_func`` convention, ``f(loops) ->
seconds spent running the operation ``loops`` times``; leaving it cleans up, also after an
error. The same table runs two ways:

* ``python micro.py child --values 5 ...``: the suite's own child mode, one process of one
  round; run.py and gate.py start these for each tree (interleaved) and turn the JSON into
  pyperf runs. Needs only the standard library and the ``celery`` under test, so it runs in
  a throwaway venv of an older commit as well.
* ``python micro.py [pyperf options]``: the table under ``pyperf.Runner`` (its worker
  processes, calibration, ``-o``, ``--rigorous``...), for careful runs by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

TimeFunc = Callable[[int], float]
Benchmark = Callable[[], contextlib.AbstractContextManager[TimeFunc]]

#: Loops never grow past this in calibration (an operation that takes no time is a bug).
MAX_LOOPS = 2**24


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``--only`` selects ``name``: a pattern is an fnmatch glob or a dotted prefix
    (``micro`` selects ``micro.json_dumps_args``); no pattern selects everything."""
    return not patterns or any(
        fnmatch.fnmatchcase(name, p) or name.startswith(p.rstrip(".") + ".") for p in patterns
    )


def split_patterns(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def calibrate(func: TimeFunc, min_time: float) -> int:
    """The loop count (a power of two) that makes one value last at least ``min_time``."""
    func(1)  # the first call pays for lazy imports and connections
    loops = 1
    while loops < MAX_LOOPS and func(loops) < min_time:
        loops *= 2
    return loops


def measure(func: TimeFunc, values: int, warmups: int, min_time: float) -> dict[str, Any]:
    """Calibrate, warm up, then time ``values`` values; every value is seconds per loop."""
    loops = calibrate(func, min_time)
    warm = [func(loops) / loops for _ in range(warmups)]
    return {"loops": loops, "warmups": warm, "values": [func(loops) / loops for _ in range(values)]}


def run_table(table: dict[str, Benchmark], only: Sequence[str], values: int, warmups: int,
              min_time: float) -> dict[str, Any]:
    """Every selected benchmark; one that cannot set up or run here (an older tree without
    the API it uses, a server down) is reported under ``skipped`` with the reason."""
    import celery

    out: dict[str, Any] = {"python": sys.executable, "celery": celery.__file__,
                           "results": {}, "skipped": {}}
    for name, bench in table.items():
        if not matches(name, only):
            continue
        try:
            with bench() as func:
                out["results"][name] = measure(func, values, warmups, min_time)
        except Exception as exc:
            out["skipped"][name] = f"{type(exc).__name__}: {exc}"
    return out


def child_main(table: dict[str, Benchmark], argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="child")
    parser.add_argument("--only", default="", help="comma-separated names, globs or prefixes")
    parser.add_argument("--values", type=int, default=5)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per value")
    args = parser.parse_args(argv)
    out = run_table(table, split_patterns(args.only), args.values, args.warmups, args.min_time)
    print(json.dumps(out))


def pyperf_main(table: dict[str, Benchmark]) -> None:
    """The table under ``pyperf.Runner`` (every pyperf option works; ``--only`` added)."""
    import pyperf

    def forward(cmd: list[str], args: argparse.Namespace) -> None:
        if args.only:
            cmd.extend(["--only", args.only])

    runner = pyperf.Runner(add_cmdline_args=forward)
    runner.argparser.add_argument("--only", default="", help="comma-separated names or globs")
    args = runner.parse_args()
    with contextlib.ExitStack() as stack:
        for name, bench in table.items():
            if matches(name, split_patterns(args.only)):
                runner.bench_time_func(name, stack.enter_context(bench()))


def main(table: dict[str, Benchmark]) -> None:
    """``child ...``: the suite's child mode; anything else: pyperf's Runner."""
    if sys.argv[1:2] == ["child"]:
        child_main(table, sys.argv[2:])
    else:
        pyperf_main(table)


def timed(func: Callable[[], Any]) -> TimeFunc:
    """The time function of a no-argument callable."""

    def time_func(loops: int) -> float:
        counter = time.perf_counter
        t0 = counter()
        for _ in range(loops):
            func()
        return counter() - t0

    return time_func


@contextlib.contextmanager
def simple(func: Callable[[], Any]) -> Iterator[TimeFunc]:
    yield timed(func)
