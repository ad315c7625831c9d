"""bench/scaling.py end to end, tiny: one interpreter, 1 and 2 threads, on a real Redis and
worker; then perf/record.py records its JSON and perf/render.py draws it."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import flushed_redis_url
from tests.unit.test_perf_dashboard import COMMIT_A, _machine, record, render

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_sweep_reports_every_point_and_is_recorded_and_charted(tmp_path):
    url = flushed_redis_url(13)  # the database the script uses (fails under CI without Redis)
    out, pyperf_dir = tmp_path / "scaling.json", tmp_path / "pyperf"
    # This test's Python is the one interpreter (.venv-ft may not exist): the GIL build in
    # the plain pass, the free-threaded one in ci/ft-test.sh's.
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scaling.py"), "--python", f"this={sys.executable}",
         "--threads", "1,2", "--workloads", "sync-cpu,async-cpu", "--cpu-ms", "1",
         "--tasks-per-thread", "30", "--rounds", "1", "--url", url, "--json", str(out),
         "--pyperf", str(pyperf_dir)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(out.read_text())

    assert data["meta"]["tool"] == "bench/scaling.py" and "--threads 1,2" in data["meta"]["command"]
    facts = data["interpreters"]["this"]
    assert facts["free_threaded"] is bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    points = {(p["workload"], p["threads"]): p for p in data["points"]}
    assert sorted(points) == [("async-cpu", 1), ("async-cpu", 2), ("sync-cpu", 1), ("sync-cpu", 2)]
    for (_, threads), point in points.items():
        assert "error" not in point, point
        assert point["interpreter"] == "this" and point["tasks"] == 30 * threads
        assert point["tasks_per_s"] > 0 and point["speedup"] > 0
        # The worker said which interpreter it was and whether its GIL was on.
        assert point["worker_gil"] == ("on" if facts["gil_enabled"] else "off")
        assert point["worker_python"] == facts["version"]
        assert [r["round"] for r in point["rounds"]] == [1]
    assert points[("sync-cpu", 1)]["speedup"] == 1.0
    assert "sync-cpu" in run.stdout and "speed-up" in run.stdout
    assert json.loads((pyperf_dir / "this.json").read_text())["benchmarks"]

    rec = record.build_record(data, data["meta"]["command"], COMMIT_A, _machine("m1"))
    assert rec["runs"][0]["kind"] == "scaling"
    assert len(rec["benchmarks"]) == 4 and rec["scaling"]["interpreters"]["this"]["label"]
    bench = rec["benchmarks"]["scaling: async-cpu 1 ms / this / 2 threads"]
    assert bench["metrics"]["threads"] == 2 and bench["metrics"]["tasks_per_s"] > 0
    page = render.render([rec | {"_file": "x.json"}])
    assert "Scaling with threads" in page and page.count("speed-up over 1 thread</text>") == 2
