"""``DjangoTask``: the task class of apps under the Django fix-up (Celery's
``celery.contrib.django.task``), with sends deferred to the transaction's commit."""

from __future__ import annotations

import functools
from typing import Any

from ...app.task import Task

__all__ = ["DjangoTask"]


class DjangoTask(Task):
    """A Task with ``delay_on_commit``/``apply_async_on_commit``: the message is sent when
    the current database transaction commits (Django's ``transaction.on_commit``), so the
    worker sees the rows the caller wrote; at once outside a transaction. They return None,
    as Celery's: there is no task id before the send."""

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        from django.db import transaction

        transaction.on_commit(functools.partial(self.delay, *args, **kwargs))

    def apply_async_on_commit(self, *args: Any, **kwargs: Any) -> None:
        from django.db import transaction

        transaction.on_commit(functools.partial(self.apply_async, *args, **kwargs))
