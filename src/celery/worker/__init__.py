"""The worker: consumer, executors (loop threads and sync threads), tracer."""

from .worker import Worker

__all__ = ["Worker"]
