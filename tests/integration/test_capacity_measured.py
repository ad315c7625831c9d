"""``celery capacity`` is right: it sweeps a real worker for a target, then a worker started
with the settings it recommends does what it predicted (within 25 %) and meets the target,
on the default SQLite broker and on Redis. The workload's throughput is set by the task (an
``await`` of 20 ms), so the prediction holds on a busy machine; a target no configuration
reaches is answered with the best found and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, need_server
from tests.integration.capacity_helpers import (
    RESIZE,
    cli_env,
    processes_mentioning,
    queue_length,
    run_cli,
)

#: Not flushed (every database is some module's): a run's queue and result keys are its own,
#: and the run removes them.
REDIS_DB = 15
TARGET = 100.0


def capacity(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = run_cli(cwd, "capacity", "--target-rate", f"{TARGET:g}", "--budget", "20",
                   "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.count("\n") == 1  # one JSON object
    report = json.loads(proc.stdout)
    assert processes_mentioning(report["queue"]) == [] and report["purged"]
    return report


def assert_a_fitted_recommendation(report: dict[str, Any]) -> float:
    """The sweep's shape; returns the predicted throughput of the recommended worker."""
    seen = {k: report[k] for k in ("points", "variants", "recommendation", "elapsed_s")}
    slots = [p["slots"] for p in report["points"]]
    assert slots[:3] == [1, 2, 4] and all(p["throughput"] > 0 for p in report["points"]), seen
    assert report["elapsed_s"] < 30, seen  # the budget, give or take a worker's stop
    threads = report["model"]["threads"]
    assert threads["points"] == len(slots) and threads["r2"] is not None
    assert threads["max_error"] < 0.25, threads  # the curve goes through what was measured
    rec = report["recommendation"]
    assert rec["meets_target"] is True, seen
    predicted = rec["predicted"]
    assert predicted["rate"] == TARGET and predicted["utilisation"] <= 0.8
    assert predicted["p50_ms"] <= predicted["p99_ms"]
    assert predicted["p50_ms"] >= report["base_latency"]["p50_ms"]
    assert "--loop-concurrency=" in " ".join(rec["worker_args"])
    assert report["base_latency"]["tasks"] >= 5
    return float(predicted["throughput_at_saturation"])


def test_the_recommended_worker_meets_its_prediction_on_sqlite(tmp_path: Path) -> None:
    report = capacity(tmp_path, "--io-ms", "20", "--mix", "1", "--prefetch-multiplier", "4",
                      "--html", "capacity.html")
    predicted = assert_a_fitted_recommendation(report)
    page = (tmp_path / "capacity.html").read_text()
    assert page.count("<svg") == 2 and "<script" not in page
    # An independent measurement: celery bench, a fresh worker with the recommended settings.
    rec = report["recommendation"]
    worker = [f"--worker-arg={a}" if a.startswith("--processes") else a
              for a in rec["worker_args"]]
    slots = rec["worker"]["loop_concurrency"] * rec["worker"]["processes"]
    proc = run_cli(tmp_path, "bench", "--io-ms", "20", "--mix", "1", *worker,
                   "--in-flight", str(3 * slots + 10), "--tasks", str(int(predicted * 3)),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)["throughput_per_s"]
    assert abs(measured / predicted - 1) <= 0.25, (measured, predicted)
    assert measured >= TARGET
    assert queue_length(f"sqlite:///{tmp_path}/celery-broker.db", report["queue"]) == 0


@pytest.mark.redis
def test_the_recommended_worker_meets_its_prediction_on_redis(tmp_path: Path) -> None:
    need_server("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    (tmp_path / "calls.jsonl").write_text("[640, 480]\n[320]\n{\"args\": [1024], "
                                          "\"kwargs\": {\"height\": 768}}\n")
    # A fixed queue: the two routing keys a Redis queue leaves behind are the same each run.
    # A fixed prefetch multiplier: no other setting is tried (tests/unit covers choosing one).
    report = capacity(tmp_path, "--task", RESIZE, "--args-from", "calls.jsonl", "--verify",
                      "--queue", "capacity-measured", "--prefetch-multiplier", "4",
                      env=cli_env(url, url))
    predicted = assert_a_fitted_recommendation(report)
    assert report["workload"]["task"] == RESIZE and report["broker"] == url
    check = report["verification"]  # the recommended worker, started afresh and measured
    assert check["predicted"] == predicted
    assert abs(check["error"]) <= 0.25, (check, report["recommendation"], report["variants"])
    assert check["meets_target"] is True and check["throughput"] >= TARGET
    assert queue_length(url, report["queue"]) == 0


def test_a_target_out_of_reach_says_the_best_found_and_why(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "capacity", "--io-ms", "20", "--mix", "1", "--max-slots", "1",
                   "--max-cores", "1", "--budget", "5", "--target-rate", "100000", "--json",
                   "--queue", "capacity-out-of-reach")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: no configuration on this machine reaches 100000 tasks/s: the best found "
        "saturates at "), proc.stderr
    assert "(--loop-workers=1 --loop-concurrency=1 " in lines[0] and "bound by " in lines[0]
    report = json.loads(proc.stdout)  # the report still comes, for the record
    rec = report["recommendation"]
    assert rec["meets_target"] is False and len(report["points"]) == 1
    assert rec["predicted"]["p99_ms"] is None  # past saturation: no latency to predict
    if rec["processes_needed"] is not None:  # bound by the task or CPU: more workers help
        assert rec["machines_needed"] == rec["processes_needed"]  # one core a machine
        assert f"it needs about {rec['processes_needed']} worker processes" in lines[0]
    assert processes_mentioning("capacity-out-of-reach") == []
    assert queue_length(f"sqlite:///{tmp_path}/celery-broker.db", "capacity-out-of-reach") == 0
