"""Live resizing of a worker's executors: ``pool_grow``/``pool_shrink``, ``autoscale`` and
``celery worker --autoscale=MAX,MIN``.

What is resized (docs/monitoring.md#resizing-the-pool):

* the sync threads (``def`` tasks): what Celery's pool is, so the commands and the
  autoscaler act on them by default;
* the loop concurrency (``async def`` tasks at once on each loop worker), with
  ``pool="loop"``, or by default on a worker started with no sync threads. It is never
  autoscaled: a slot costs no thread, so the size is a limit the operator sets, not a cost.

The prefetch window follows: ``multiplier × (loop workers × loop concurrency + threads)``,
where under ``--autoscale`` threads is the autoscale maximum (so that a backlog up to it is
fetched and seen, and a pool scaled down to 0 threads still fetches the task that grows it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .consumer import Consumer
    from .executor.base import Executor

__all__ = ["AUTOSCALE_INTERVAL", "MAX_LOOP_CONCURRENCY", "MAX_THREADS", "Kind", "Pool",
           "UNLIMITED_WINDOW", "prefetch_window"]

logger = logging.getLogger("celery.worker.pool")

#: No upper limit asked (prefetch multiplier 0): still cap what one worker holds.
UNLIMITED_WINDOW = 65536
#: Most sync threads one worker process may be grown to.
MAX_THREADS = 1024
#: Most async tasks at once per loop worker that a resize may set.
MAX_LOOP_CONCURRENCY = 65536
#: How often the autoscaler looks at the demand (seconds). Growing waits at most this long.
AUTOSCALE_INTERVAL = 0.25

#: What a resize changes: the sync threads, or the loop concurrency.
Kind = Literal["threads", "loop"]


def prefetch_window(multiplier: int, concurrency: int) -> int:
    """Messages a worker may hold: ``multiplier × concurrency`` (0: unlimited, capped)."""
    return max(1, multiplier * concurrency) if multiplier else UNLIMITED_WINDOW


def whole(value: Any, name: str, least: int) -> int:
    """``value`` as a whole number of at least ``least`` (a string of one is accepted:
    remote-control arguments are JSON from any client); else ValueError saying why."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None
    if number < least:
        raise ValueError(f"{name} must be at least {least}, not {number}")
    return number


class Pool:
    """The current sizes of one worker's executors, and the commands that change them.

    Consumer loop only: every method runs on the worker's main event loop (the remote-control
    server and the autoscaler task both live there), so its fields need no lock; the
    executors' own hand-offs are thread-safe (``ThreadExecutor.resize`` takes its lock).
    """

    def __init__(self, consumer: Consumer, loop: Executor, sync: Executor, *, loop_workers: int,
                 multiplier: int, autoscale: tuple[int, int] | None = None,
                 keepalive: float = 30.0, kind: Kind = "threads") -> None:
        self.consumer = consumer
        self.loop = loop
        self.sync = sync
        self.loop_workers = loop_workers
        self.multiplier = multiplier
        #: What ``pool_grow``/``pool_shrink`` resize when not told.
        self.kind: Kind = kind
        #: ``(max, min)`` threads under ``--autoscale``, else None.
        self.autoscale = autoscale
        #: Seconds the demand must stay below the pool's size before it shrinks.
        self.keepalive = keepalive
        self._demand: Callable[[], int] = consumer.lanes[False].demand
        self._busy_at = time.monotonic()

    # -- sizes ------------------------------------------------------------------------------

    @property
    def threads(self) -> int:
        return self.sync.size

    @property
    def loop_concurrency(self) -> int:
        return self.loop.size

    @property
    def concurrency(self) -> int:
        """Tasks that may run at once now."""
        return self.loop_workers * self.loop.size + self.sync.size

    def window(self) -> int:
        threads = self.autoscale[0] if self.autoscale else self.sync.size
        return prefetch_window(self.multiplier, self.loop_workers * self.loop.size + threads)

    def info(self) -> dict[str, Any] | None:
        """Upstream's ``stats()["autoscaler"]``, or None without ``--autoscale``."""
        if self.autoscale is None:
            return None
        return {"max": self.autoscale[0], "min": self.autoscale[1], "current": self.sync.size,
                "qty": self._demand()}

    # -- commands ---------------------------------------------------------------------------

    def grow(self, n: Any, kind: Any = None) -> str:
        """``pool_grow``: ``n`` more threads (or loop slots per loop worker). ValueError with
        a one-line reason when it cannot."""
        return self._change(whole(n, "n", 1), self._kind(kind))

    def shrink(self, n: Any, kind: Any = None) -> str:
        """``pool_shrink``: ``n`` fewer; running tasks finish first."""
        return self._change(-whole(n, "n", 1), self._kind(kind))

    def _kind(self, kind: Any) -> Kind:
        if kind is None:
            return self.kind
        if kind not in ("threads", "loop"):
            raise ValueError(f"pool must be 'threads' or 'loop', not {kind!r}")
        return "threads" if kind == "threads" else "loop"

    def _change(self, delta: int, kind: Kind) -> str:
        if kind == "loop":
            if not self.loop_workers:
                raise ValueError("this worker has no loop workers (--loop-workers 0)")
            new = self.loop.size + delta
            if not 1 <= new <= MAX_LOOP_CONCURRENCY:
                raise ValueError(f"the loop concurrency would be {new}: it must stay between 1 "
                                 f"and {MAX_LOOP_CONCURRENCY}")
            self.set_loop_concurrency(new)
            return "loop"
        if self.autoscale is not None:
            verb = "pool_grow" if delta > 0 else "pool_shrink"
            raise ValueError(f"{verb} is not supported with autoscale: change the autoscale "
                             f"range instead")
        least = 0 if self.loop_workers else 1
        new = self.sync.size + delta
        if not least <= new <= MAX_THREADS:
            raise ValueError(f"the sync threads would be {new}: they must stay between {least} "
                             f"and {MAX_THREADS}")
        self.set_threads(new)
        return "threads"

    def update_autoscale(self, max_: Any = None, min_: Any = None) -> tuple[int, int]:
        """``autoscale``: the new (max, min) (None keeps one); the pool goes inside the
        range at once (shrinking lets running tasks finish)."""
        if self.autoscale is None:
            raise ValueError("autoscale is not enabled on this worker "
                             "(start it with --autoscale=MAX,MIN)")
        old_max, old_min = self.autoscale
        high = old_max if max_ is None else whole(max_, "max", 1)
        low = old_min if min_ is None else whole(min_, "min", 0)
        if high > MAX_THREADS:
            raise ValueError(f"max must be at most {MAX_THREADS}, not {high}")
        if low > high:
            raise ValueError(f"min ({low}) must not be greater than max ({high})")
        self.autoscale = (high, low)
        size = self.sync.size
        self.set_threads(min(high, max(low, size)))  # also takes the window for the new max
        return high, low

    def set_threads(self, count: int) -> None:
        if count != self.sync.size:
            logger.info("Sync threads: %d -> %d", self.sync.size, count)
        self.sync.resize(count)
        self.consumer.resized(self.window())

    def set_loop_concurrency(self, concurrency: int) -> None:
        logger.info("Loop concurrency: %d -> %d per loop worker", self.loop.size, concurrency)
        self.loop.resize(concurrency)
        self.consumer.resized(self.window())

    # -- the autoscaler ---------------------------------------------------------------------

    def scale(self, now: float) -> None:
        """One look at the demand (``def`` tasks accepted and not finished): grow to it at
        once, up to max; shrink toward it, down to min, once it has stayed below the pool's
        size for ``keepalive`` seconds."""
        if self.autoscale is None or self.consumer.stopping:
            return
        high, low = self.autoscale
        demand, size = self._demand(), self.sync.size
        if demand >= size:
            self._busy_at = now
        target = min(high, max(low, demand))
        if target > size or (target < size and now - self._busy_at >= self.keepalive):
            logger.info("Autoscale: %s to %d sync threads (%d def tasks in the worker)",
                        "growing" if target > size else "shrinking", target, demand)
            self.set_threads(target)
            self._busy_at = now  # the next step down waits a keepalive from here

    async def run_autoscaler(self) -> None:
        """Scale every AUTOSCALE_INTERVAL until cancelled (the worker's shutdown)."""
        if self.autoscale is None:
            return
        while True:
            await asyncio.sleep(AUTOSCALE_INTERVAL)
            try:
                self.scale(time.monotonic())
            except Exception:  # a bug here must not end autoscaling: logged, tried again
                logger.exception("Autoscale: could not resize the pool")
