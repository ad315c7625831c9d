"""Celery's bootsteps, by name only: custom worker and consumer steps are not supported.

Modules that define steps import (``class MyStep(bootsteps.StartStopStep)`` works), but
``app.steps["worker"].add(MyStep)`` raises ``ImproperlyConfigured`` naming what to use
instead: the worker's signals (``worker_init``, ``worker_ready``, ``worker_shutdown``,
``worker_process_init``; docs/tasks.md#signals) for start/stop work, and a task or the
``task_prerun``/``task_postrun`` signals for per-message work. This worker is not built
from steps, so a step added here would never run; failing says so at once.
"""

from __future__ import annotations

from typing import Any

from .exceptions import ImproperlyConfigured

__all__ = ["Blueprint", "ConsumerStep", "StartStopStep", "Step", "StepSet"]

_INSTEAD = ("custom bootsteps are not supported by celery-asyncio (its worker is not built "
            "from steps): use the worker_init, worker_ready, worker_shutdown or "
            "worker_process_init signals for start/stop work, or task_prerun/task_postrun "
            "for per-task work (docs/tasks.md#signals)")


class Step:
    """A Celery step class, for subclassing only (see the module docstring)."""

    name: str | None = None
    requires: tuple[Any, ...] = ()

    def __init__(self, parent: Any = None, **kwargs: Any) -> None:
        raise ImproperlyConfigured(f"{type(self).__name__}: {_INSTEAD}")


class StartStopStep(Step):
    pass


class ConsumerStep(StartStopStep):
    pass


class Blueprint:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImproperlyConfigured(f"Blueprint: {_INSTEAD}")


class StepSet:
    """``app.steps["worker"]`` / ``app.steps["consumer"]``: adding to it fails clearly."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def add(self, step: Any) -> None:
        name = getattr(step, "__name__", repr(step))
        raise ImproperlyConfigured(f"app.steps[{self.kind!r}].add({name}): {_INSTEAD}")

    update = add

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0
