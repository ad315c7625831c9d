"""bench/rtt_ab.py end to end, tiny: one pair of runs on a real Redis and worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import flushed_redis_url

ROOT = Path(__file__).resolve().parents[2]


def test_one_pair_reports_both_sides_and_their_ratio():
    url = flushed_redis_url(13)  # (fails under CI without Redis)
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rtt_ab.py"), "--base", sys.executable,
         "--current", sys.executable, "--pairs", "1", "--samples", "30", "--url", url,
         "--current-args=--loop-inline", "--async"],  # also: a CLI worker with --loop-inline
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = re.findall(r"^(base|current)\s+(\d+)\s+(\d+) ", run.stdout, re.MULTILINE)
    assert sorted(side for side, _, _ in rows) == ["base", "current"]
    for _, runs, p50 in rows:
        assert runs == "1" and int(p50) > 0  # one run each, its p50 in µs
    assert re.search(r"current / base: p50_us [+-]\d+\.\d%", run.stdout)
