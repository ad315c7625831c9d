"""Shared by the ``celery capacity`` tests: the CLI run in a scratch directory with the test
app, and the checks that a run left nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from celery import Celery

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.capacityapp"
RESIZE = "tests.apps.capacityapp.resize"
STRICT = "tests.apps.capacityapp.strict"


def cli_env(broker: str | None = None, backend: str | None = None) -> dict[str, str]:
    """The repo importable, the app's URLs from CAPACITYAPP_*, none of the variables the CLI
    reads as option defaults."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "APP", "BROKER_URL", "RESULT_BACKEND", "CONFIG_MODULE", "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND", "CAPACITYAPP_BROKER", "CAPACITYAPP_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if broker:
        env["CAPACITYAPP_BROKER"] = broker
    if backend:
        env["CAPACITYAPP_BACKEND"] = backend
    return env


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None,
            global_args: tuple[str, ...] = (), timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", APP, *global_args, *args],
                          cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def queue_length(broker: str, queue: str) -> int:
    app = Celery("check", broker=broker, set_as_current=False)
    try:
        return app.portal.call(app.transport.queue_length(queue))
    finally:
        app.close()
