"""Enqueue rate on Redis: ``delay()`` one at a time, and ``adelay()`` 100 at a time.

``delay()`` is a plain one (no options: the queue is the task's attribute here), which on
Redis fills the task's envelope template (src/celery/app/template.py); ``adelay()`` passes
the queue as an option. ``enqueue.delay`` measures the pipelined sync publish
(``publish_pipeline=True``, the default before issue 20, so its history goes on);
``enqueue.delay_confirmed`` the confirmed one, each ``delay()`` waiting for Redis's reply
(the default since). Each sets the mode on the transport's publisher itself, so that a
base tree with the other default measures the same path.

Messages go to a queue of their own (``perf-suite-enqueue-<pid>``), purged after every value
and at the end; no worker runs, no result is stored. Values are seconds per message. The app
is suiteapp's, on ``$BENCH_URL`` (default: database 9 of the local Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from timing import Benchmark, TimeFunc, main

QUEUE = f"perf-suite-enqueue-{os.getpid()}"
#: adelay() calls awaited together.
CONCURRENCY = 100


@contextlib.contextmanager
def _sender(concurrent: bool, pipelined: bool | None = None) -> Iterator[TimeFunc]:
    from suiteapp import app, noop

    publisher = app.transport._publisher  # (a SyncPublisher in every tree the gate builds)
    default = publisher.pipelined
    if pipelined is not None:
        publisher.pipelined = pipelined
    loop = asyncio.new_event_loop()
    noop.queue = QUEUE  # for the plain delay(); this child process sends nothing else

    async def send_concurrently(loops: int) -> None:
        for start in range(0, loops, CONCURRENCY):
            batch = min(CONCURRENCY, loops - start)
            await asyncio.gather(*(noop.aapply_async(queue=QUEUE) for _ in range(batch)))

    def time_func(loops: int) -> float:
        t0 = loop.time()
        if concurrent:
            loop.run_until_complete(send_concurrently(loops))
        else:
            for _ in range(loops):
                noop.delay()
        elapsed = loop.time() - t0
        loop.run_until_complete(app.transport.purge(QUEUE))
        return elapsed

    try:
        yield time_func
    finally:
        publisher.pipelined = default
        try:
            loop.run_until_complete(app.transport.purge(QUEUE))
            loop.run_until_complete(app.transport.aclose())
        finally:
            loop.close()
            app.close()


BENCHMARKS: dict[str, Benchmark] = {
    "enqueue.delay": lambda: _sender(concurrent=False, pipelined=True),
    "enqueue.delay_confirmed": lambda: _sender(concurrent=False, pipelined=False),
    "enqueue.adelay_x100": lambda: _sender(concurrent=True),
}

if __name__ == "__main__":
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # bench/: benchapp
    os.environ.setdefault("BENCH_URL", "redis://127.0.0.1:6379/9")
    main(BENCHMARKS)
