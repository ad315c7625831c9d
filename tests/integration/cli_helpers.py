"""Shared by the CLI tests that run an app in a subprocess (``celery bench``,
``celery capacity``): its environment, and the processes a run may have left behind."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def app_env(prefix: str, broker: str | None = None, backend: str | None = None) -> dict[str, str]:
    """The repo importable, the test app's URLs from ``{prefix}_BROKER``/``{prefix}_BACKEND``,
    none of the variables the CLI reads as option defaults."""
    drop = ("APP", "BROKER_URL", "RESULT_BACKEND", "CONFIG_MODULE", "CELERY_BROKER_URL",
            "CELERY_RESULT_BACKEND", f"{prefix}_BROKER", f"{prefix}_BACKEND")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if broker:
        env[f"{prefix}_BROKER"] = broker
    if backend:
        env[f"{prefix}_BACKEND"] = backend
    return env


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
