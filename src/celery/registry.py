"""``celery.registry``: Celery's old module for the current app's task registry (``tasks``),
kept because libraries still import it (OpenTelemetry's Celery instrumentation does)."""

from __future__ import annotations

from typing import Any

__all__ = ["tasks"]  # noqa: F822 - module __getattr__ gives it, read at each use


def __getattr__(name: str) -> Any:
    # Read at each use, as Celery's compat module does: the current app may change.
    if name == "tasks":
        from ._state import get_current_app

        return get_current_app().tasks
    raise AttributeError(f"module 'celery.registry' has no attribute {name!r}")
