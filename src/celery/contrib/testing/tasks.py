"""``celery.ping``: the task ``start_worker`` sends to check that its worker runs tasks."""

from __future__ import annotations

from ... import shared_task

__all__ = ["ping"]


@shared_task(name="celery.ping")
def ping() -> str:
    """Answer ``"pong"``."""
    return "pong"
