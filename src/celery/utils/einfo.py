"""ExceptionInfo: an exception with its formatted traceback, as Celery's signals pass it."""

from __future__ import annotations

import builtins
import sys
import traceback as _traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["ExceptionInfo"]


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """What ``einfo`` holds in Celery's task_failure and task_retry signals."""

    exception: BaseException
    type: type[BaseException]
    tb: TracebackType | None
    #: The formatted traceback (text).
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ExceptionInfo:
        text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(exc, type(exc), exc.__traceback__, text)

    @property
    def exc_info(self) -> tuple[builtins.type[BaseException], BaseException, TracebackType | None]:
        return self.type, self.exception, self.tb

    def __str__(self) -> str:
        return self.traceback

    def for_signal(self) -> Any:
        """What ``task_failure`` and ``task_retry`` pass as ``einfo``: this, or Celery's own
        class (``billiard.einfo.ExceptionInfo``) when something imported billiard.

        Libraries written for Celery test ``isinstance(einfo, billiard.einfo.ExceptionInfo)``
        to find the exception (OpenTelemetry's instrumentation, which imports billiard itself,
        records the einfo as an exception otherwise, and fails). billiard is never imported
        here: a process without such a library gets this class, with the same attributes.
        """
        billiard_einfo = sys.modules.get("billiard.einfo")
        if billiard_einfo is None:
            return self
        return billiard_einfo.ExceptionInfo((self.type, self.exception, self.tb))
