"""The fault suite's scale and its figures.

``FAULT_SCALE=full`` runs the scenarios at the issue's sizes (5,000 tasks through the fault
proxy, 10,000 per kill -9 run); the default is a CI size that keeps the suite to a few
minutes. Each scenario reports its figures (runs, sent, lost, duplicated) on stdout and, when
``FAULT_REPORT`` names a file, as one JSON line appended to it (docs/reliability.md quotes
them).
"""

from __future__ import annotations

import json
import os

import pytest

FULL = os.environ.get("FAULT_SCALE", "").lower() == "full"


def scaled(ci: int, full: int) -> int:
    """``full`` under FAULT_SCALE=full, else ``ci``."""
    return full if FULL else ci


@pytest.fixture
def report(request: pytest.FixtureRequest):
    """Record a scenario's figures: ``report(runs=..., sent=..., lost=..., duplicated=...)``."""

    def record(**figures: object) -> None:
        line = {"scenario": request.node.name, "scale": "full" if FULL else "ci", **figures}
        print("FAULT FIGURES", json.dumps(line))
        path = os.environ.get("FAULT_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")

    return record
