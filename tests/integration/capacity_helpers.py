"""Shared by the ``celery capacity`` tests: the CLI run in a scratch directory with the test
app, and the checks that a run left nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celery import Celery
from tests.integration.cli_helpers import app_env, processes_mentioning

__all__ = ["app_env", "cli_env", "processes_mentioning", "queue_length", "run_cli"]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.capacityapp"
RESIZE = "tests.apps.capacityapp.resize"
STRICT = "tests.apps.capacityapp.strict"


def cli_env(broker: str | None = None, backend: str | None = None) -> dict[str, str]:
    return app_env("CAPACITYAPP", broker, backend)


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
            global_args: tuple[str, ...] = (), timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", APP, *global_args, *args],
                          cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def queue_length(broker: str, queue: str) -> int:
    app = Celery("check", broker=broker, set_as_current=False)
    try:
        return app.portal.call(app.transport.queue_length(queue))
    finally:
        app.close()
