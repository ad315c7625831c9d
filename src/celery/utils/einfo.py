"""ExceptionInfo: an exception with its formatted traceback, as Celery's signals pass it."""

from __future__ import annotations

import builtins
import traceback as _traceback
from dataclasses import dataclass
from types import TracebackType

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
