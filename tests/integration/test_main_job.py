"""The README's main job (examples/workload.py) on the embedded SQLite default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_main_job_runs_on_sqlite_and_stops_by_itself(tmp_path):
    env = dict(os.environ, WORKLOAD_DATA=str(tmp_path))
    for name in ("WORKLOAD_BROKER", "WORKLOAD_BACKEND"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "examples/workload.py", "--tasks", "400"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"broker sqlite:///{tmp_path}/broker.db, results db+sqlite:///{tmp_path}/results.db" in out.stdout
    assert "400/400" in out.stdout  # the progress bar reached the end
    summary = re.search(r"tasks +400 \((\d+) failed; (\d+) were designed to fail\)", out.stdout)
    assert summary and summary.group(1) == summary.group(2) != "0", out.stdout
    assert re.search(r"throughput +\d+ tasks/s", out.stdout)
    assert re.search(r"latency +p50 [\d.]+ ms +p90 [\d.]+ ms +p99 [\d.]+ ms", out.stdout)
    pid = int(re.search(r"worker pid (\d+)", out.stdout).group(1))
    assert "worker     exited with code 0" in out.stdout
    assert not Path(f"/proc/{pid}").exists()  # nothing left running
    assert (tmp_path / "broker.db").exists() and (tmp_path / "results.db").exists()
