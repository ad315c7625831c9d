"""bench/peers.py: each floor is the best of the rounds on its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_ping_and_queue_floors_each_come_from_their_best_round():
    rounds = [
        {"client": "redis-py", "p50_ms": 0.019, "p99_ms": 0.024, "queue_p50_ms": 0.126,
         "queue_p99_ms": 0.185},
        {"client": "redis-py", "p50_ms": 0.030, "p99_ms": 0.037, "queue_p50_ms": 0.068,
         "queue_p99_ms": 0.178},
    ]
    best = load_peers()._best_ping(rounds)
    assert (best["p50_ms"], best["p99_ms"]) == (0.019, 0.024)
    assert (best["queue_p50_ms"], best["queue_p99_ms"]) == (0.068, 0.178)
    assert best["rounds"] == rounds
    assert load_peers()._best_ping([]) == {}
