"""bench/rabbitmq.py end to end, tiny: one round of ours on a real RabbitMQ and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import flushed_redis_url

ROOT = Path(__file__).resolve().parents[2]
AMQP_VHOST = "celery-interop-bench-smoke"

pytestmark = [pytest.mark.amqp, pytest.mark.redis]


def test_one_round_of_ours_reports_every_figure(amqp_url, tmp_path):
    url = flushed_redis_url(13)
    out = tmp_path / "rabbitmq.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rabbitmq.py"), "--only", "ours", "--rounds", "1",
         "--tasks", "300", "--latency-samples", "20", "--call-tasks", "200", "--amqp", amqp_url,
         "--url", url, "--retries", "0", "--run-timeout", "150", "--json", str(out)],
        capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = json.loads(out.read_text())["results"]["ours"]
    assert "error" not in ours, ours
    (round_,) = ours["rounds"]
    assert (round_["noop"]["tasks"], round_["latency"]["samples"], round_["call"]["tasks"]) == (
        300, 20, 200)
    assert ours["version"].startswith("celery-asyncio ")
    # Enough tasks that the worker's CPU time, counted in 10 ms ticks, is not 0 (with 40
    # one-call tasks it once was).
    for column, stats in ours["spread"].items():
        assert stats["min"] == stats["median"] == stats["max"] > 0, column
    row = next(line for line in run.stdout.splitlines() if line.startswith("| ours |"))
    assert row.count("[") == 6 and "failed" not in row
