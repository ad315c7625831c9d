"""Loggers as Celery names them: ``get_logger``, and ``get_task_logger`` for task code.

A task logger is a child of the ``celery.task`` logger; the worker gives that logger a
handler with ``worker_task_log_format``, whose ``%(task_name)s`` and ``%(task_id)s`` are the
task running in the logging thread or asyncio task (``TaskFormatter``), ``???`` outside one.
"""

from __future__ import annotations

import logging

from .._state import current_request, current_task_var

__all__ = ["TaskFormatter", "get_logger", "get_task_logger", "task_logger"]

#: The parent of every task logger.
task_logger = logging.getLogger("celery.task")

_RESERVED = frozenset({"celery", "celery.task"})


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` (Celery's helper)."""
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task code (``logger = get_task_logger(__name__)``): its records go
    through ``celery.task``, formatted with the running task's name and id.

    Raises:
        RuntimeError: ``name`` is one of Celery's own logger names.
    """
    if name in _RESERVED:
        raise RuntimeError(f"Logger name {name!r} is reserved!")
    logger = logging.getLogger(name)
    if logger is not task_logger:
        logger.parent = task_logger
    return logger


class TaskFormatter(logging.Formatter):
    """A formatter that fills ``task_name`` and ``task_id`` from the running task."""

    def format(self, record: logging.LogRecord) -> str:
        task = current_task_var.get()
        request = current_request.get() if task is not None else None
        record.__dict__.setdefault("task_name", task.name if task is not None else "???")
        record.__dict__.setdefault("task_id", request.id if request is not None else "???")
        return super().format(record)
