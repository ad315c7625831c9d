"""A Lamport logical clock, as kombu's ``LamportClock`` keeps one per app."""

from __future__ import annotations

import threading

__all__ = ["LamportClock"]


class LamportClock:
    """A counter that moves forward on every local event and past every clock value seen.

    ``forward()`` before sending something stamped with the clock; ``adjust(other)`` on
    receiving a stamp. Thread-safety: every method may be called from any thread (``_lock``
    guards ``value``).
    """

    def __init__(self, initial_value: int = 0) -> None:
        self._lock = threading.Lock()
        self.value = initial_value

    def forward(self) -> int:
        """Move one tick forward; the new value."""
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: int) -> int:
        """Move past ``other`` (a stamp received from another node); the new value."""
        with self._lock:
            self.value = max(self.value, other) + 1
            return self.value

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"<LamportClock: {self.value}>"
