"""The executor contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..request import Outcome, Request

__all__ = ["DoneCallback", "Executor"]


class DoneCallback(Protocol):
    """Called with each finished request's Outcome, from the executor's thread. ``alone``:
    the executor had nothing else to do when it finished (no request waiting for a thread
    and no other thread running one; no other task on the loop), and the consumer has not
    settled that request already, so the result may be stored right there
    (worker/results.py).
    """

    def __call__(self, outcome: Outcome, alone: bool = False) -> None: ...


class Executor(Protocol):
    """Runs requests on threads it owns and reports each Outcome through ``on_done``.

    ``submit`` and ``cancel_all`` are called from the consumer's loop thread; the executor
    never blocks that thread. ``groups`` lists the capacity of each slot group (one group per
    loop worker; a single group for the sync threads); the consumer never submits more
    requests to a group than its capacity. ``starts`` says how many of a group's requests
    run at once; the others wait in the executor, taken in the order they were submitted
    (worker/lanes.py). Both lists change in place when the executor is resized.
    """

    groups: list[int]
    starts: list[int]
    #: The size ``resize`` last set: threads (sync), or tasks at once per loop (loop).
    size: int

    def start(self) -> None: ...

    def resize(self, size: int) -> None:
        """Change ``size`` while running (consumer loop): ``groups`` and ``starts`` change
        in place; nothing running is interrupted (worker/pool.py)."""

    def submit(self, group: int, requests: Sequence[Request]) -> None: ...

    def abandon(self, request: Request, why: str) -> None:
        """Stop waiting for a running request whose hard time limit struck or that was
        terminated (``why`` says which; consumer loop).

        Its slot is already free; a late outcome it may still report is ignored."""

    def withdraw(self, request: Request) -> bool:
        """Take back a request waiting in the executor (True); False once it started."""

    def cancel_all(self) -> list[Request]:
        """Cold shutdown: stop running requests where possible (they report requeue); the
        requests waiting are dropped, and returned."""

    def stop(self, timeout: float) -> None:
        """Stop the threads once they are idle; waits up to ``timeout`` seconds."""
