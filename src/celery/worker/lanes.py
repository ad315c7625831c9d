"""The consumer's lanes: requests waiting for an executor, and those handed to it.

A lane is the consumer's view of one executor (the loop workers, or the sync threads). Its
requests are ``held`` (accepted, waiting for room in the executor), then handed over
(``running``: settled by their outcome). An executor may take more requests than it starts
at once: each group runs ``starts[g]`` requests and keeps the rest waiting, in the order it
got them (``groups[g]`` in all). The sync threads do: a thread that finishes a task takes the
next at once, instead of going idle until the consumer's loop has taken its outcome in and
handed over more, a round trip through the loop per task (docs/performance.md).

A request waiting in the executor has not started for anyone: it is not acked yet (acks
early), has no time limit running and is not ``active`` for ``inspect``. The lane keeps those
in ``unstarted``, in the executor's order, and starts the first of them for the consumer
(``start``: its ack, its time limit) when a started request of its group is settled: its
thread then takes the next waiting one. A request settled before it started (withdrawn,
or terminated) frees no thread. Rarely (a request terminated just as its thread took it)
this view lags the executor by one request: one runs before the consumer starts it, and if
its outcome comes first, ``settle`` says it never started, which acks it then; nothing is
lost or acked twice.

A resized executor (worker/pool.py) changes ``starts`` in place. Growing, ``rebalance``
starts as many waiting requests as the new threads take. Shrinking, the threads beyond the
new size exit as they finish their task instead of taking the next, so a settle starts the
next waiting request only while fewer than ``starts`` run.

Used on the consumer's loop thread only; the executors' own hand-offs are thread-safe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .executor.base import Executor
from .request import Request

__all__ = ["Lane"]


class Lane:
    """Requests held for one executor and handed to it (see the module docstring)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.held: deque[Request] = deque()
        self.used = [0] * len(executor.groups)
        #: Handed to the executor and not settled yet, started or not (insertion order).
        self.running: dict[Request, None] = {}
        #: Handed over but waiting in the executor for a thread, in the executor's order.
        self.unstarted: deque[Request] = deque()
        #: How many of ``unstarted`` each group has.
        self.waiting = [0] * len(executor.groups)

    def demand(self) -> int:
        """Requests here that want to run: held, waiting in the executor or running."""
        return len(self.held) + len(self.running)

    def hand_over(self, group: int, batch: list[Request], start: Callable[[Request], None]) -> None:
        """Submit ``batch`` to ``group``; ``start`` those that start at once (all, unless
        the group's threads are busy: the rest wait in ``unstarted``)."""
        starts = self.executor.starts[group]
        waiting = self.waiting[group] > 0
        for req in batch:
            req.slot = group
            self.running[req] = None
            # With none waiting, every request handed over so far has started.
            if not waiting and self.used[group] < starts:
                start(req)
            else:
                waiting = True
                self.unstarted.append(req)
                self.waiting[group] += 1
            self.used[group] += 1
        self.executor.submit(group, batch)

    def settle(self, req: Request, start: Callable[[Request], None]) -> bool:
        """``req`` is settled (its slot freed): True if it had started. If it had, its
        thread takes the next request waiting in its group, which starts for us too (unless
        the group shrank and its thread exits instead)."""
        group = req.slot
        self.used[group] -= 1
        if self.waiting[group] and req in self.unstarted:
            self.unstarted.remove(req)
            self.waiting[group] -= 1
            return False
        if self.waiting[group] and self.used[group] - self.waiting[group] < self.executor.starts[group]:
            self._start_next(group, start)
        return True

    def rebalance(self, start: Callable[[Request], None]) -> None:
        """After a resize: start the waiting requests that the threads added take now."""
        for group, starts in enumerate(self.executor.starts):
            while self.waiting[group] and self.used[group] - self.waiting[group] < starts:
                self._start_next(group, start)

    def _start_next(self, group: int, start: Callable[[Request], None]) -> None:
        nxt = next(r for r in self.unstarted if r.slot == group)
        self.unstarted.remove(nxt)
        self.waiting[group] -= 1
        start(nxt)

    def withdraw(self, wanted: set[str] | None = None) -> list[Request]:
        """Take back from the executor the unstarted requests whose id is in ``wanted``
        (all with None) and that no thread took meanwhile; they leave the lane."""
        taken = []
        for req in [r for r in self.unstarted if wanted is None or r.id in wanted]:
            if self.executor.withdraw(req):
                self._forget(req)
                taken.append(req)
        return taken

    def cancel(self) -> list[Request]:
        """Cold shutdown: the executor drops what no thread took (``cancel_all``); the
        unstarted among those leave the lane and are returned (never started, never acked).
        The others still ``running`` are settled as running: no thread takes more now."""
        dropped = self.executor.cancel_all()
        taken = [r for r in dropped if r in self.unstarted]
        for req in taken:
            self._forget(req)
        self.unstarted.clear()
        self.waiting = [0] * len(self.waiting)
        return taken

    def _forget(self, req: Request) -> None:
        self.unstarted.remove(req)
        self.waiting[req.slot] -= 1
        del self.running[req]
        self.used[req.slot] -= 1

    def active(self) -> list[Request]:
        """Requests started (for ``inspect active``)."""
        waiting = set(self.unstarted)
        return [r for r in self.running if r not in waiting]
