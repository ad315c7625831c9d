"""Executors: where requests run (loop worker threads for async def, sync threads for def)."""

from .base import Executor
from .loop import LoopExecutor
from .threads import ThreadExecutor

__all__ = ["Executor", "LoopExecutor", "ThreadExecutor"]
