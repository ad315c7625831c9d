"""bench/canvas.py: its command counter, and a tiny end-to-end run on a real Redis and worker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.conftest import flushed_redis_url

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import canvas  # noqa: E402  (bench/canvas.py)


def test_the_command_counter_reads_pipelined_commands_split_anywhere():
    stream = (b"*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$5\r\nhello\r\n"
              b"*2\r\n$3\r\nget\r\n$3\r\nkey\r\nPING\r\n"
              b"*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$0\r\n\r\n")
    for size in (1, 3, 7, len(stream)):
        counts: Counter = Counter()
        parser = canvas._Commands(counts)
        for start in range(0, len(stream), size):
            parser.feed(stream[start:start + size])
        assert counts == {"LPUSH": 2, "GET": 1, "PING": 1}
        assert not parser.buf


def test_a_tiny_run_reports_every_workload_and_counts_the_sends(tmp_path):
    flushed_redis_url(13)  # the database the script uses (fails under CI without Redis)
    out = tmp_path / "canvas.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "canvas.py"), "--only", "ours", "--rounds", "1",
         "--reps", "1", "--members", "20", "--chain-steps", "3", "--chain-samples", "2",
         "--rtt-samples", "5", "--workloads", "group_noop,chord_noop_async,chain_noop",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(out.read_text())
    ours = figures["best"]["ours"]
    for name in ("group_noop", "chord_noop_async"):
        assert ours[name]["tasks_per_s"] > 0
    assert ours["chain_noop"]["step_over_rtt"] > 0
    sends = figures["sends"]["ours"]
    # One pipelined batch for the group; the chord's size first, then its batch.
    assert sends["group"]["commands"] == {"LPUSH": 20} and sends["group"]["round_trips"] == 1
    assert sends["chord"]["commands"]["LPUSH"] == 20 and sends["chord"]["round_trips"] == 2
    assert "group_noop" in run.stdout and "round trips" in run.stdout
