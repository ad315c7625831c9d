"""The tasks the events and metrics tests run, one per way a task ends: ``<prefix>.add``
(``def``) and ``<prefix>.aadd`` (``async def``) succeed, ``<prefix>.boom`` fails and
``<prefix>.again`` retries once, then succeeds."""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Celery


def register_outcome_tasks(app: Celery, prefix: str) -> None:
    @app.task(name=f"{prefix}.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name=f"{prefix}.aadd")
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    @app.task(name=f"{prefix}.boom")
    def boom() -> None:
        raise ValueError("boom")

    @app.task(name=f"{prefix}.again", bind=True, max_retries=1, default_retry_delay=0)
    def again(self: Any) -> str:
        if self.request.retries < 1:
            raise self.retry(exc=KeyError("once more"))
        return "done"
