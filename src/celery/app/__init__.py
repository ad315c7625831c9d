"""The application: Celery, Task, settings, routing."""

from .base import Celery
from .task import Context, Task

__all__ = ["Celery", "Context", "Task", "shared_task"]


def shared_task(*args, **kwargs):
    from .shared import shared_task as _shared_task

    return _shared_task(*args, **kwargs)
