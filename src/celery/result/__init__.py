"""Results: AsyncResult (one task, ``one.py``), ResultSet and GroupResult (several,
``many.py``), sync and awaitable, with Celery's names and import paths."""

from .many import GroupResult, ResultSet, result_from_tuple
from .one import AsyncResult, EagerResult, ResultBase, allow_join_result, denied_join_result

__all__ = [
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "ResultBase",
    "ResultSet",
    "allow_join_result",
    "denied_join_result",
    "result_from_tuple",
]
