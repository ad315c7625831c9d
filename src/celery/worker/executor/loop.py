"""Loop workers: N OS threads, each running its own event loop with async def tasks.

Or, with ``inline`` (``--loop-inline``), one loop worker that is the consumer's own event
loop, in the worker's main thread: no thread hand-off per task either way, and no GIL
passed back and forth between two busy threads. The price: an async task that blocks its
loop (CPU work or a blocking call between awaits) also holds up fetching, acks, result
writes and remote control until it yields, where a loop worker thread would leave the
consumer its share of the GIL. Inline suits GIL builds and well-behaved async tasks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

from ...utils.portal import new_event_loop
from .. import request as _request
from ..tracer import Tracer
from .base import DoneCallback

__all__ = ["LoopExecutor", "new_event_loop"]

logger = logging.getLogger("celery.worker.loop")


class _LoopWorker:
    """One thread with one event loop. Requests arrive by ``call_soon_threadsafe`` (the only
    way other threads touch this loop); its fields are touched on this loop's thread only.

    Inline, the loop is the running one (the consumer's, which makes it) and there is no
    thread: the consumer calls in directly, on that same thread.
    """

    def __init__(self, index: int, tracer: Tracer, on_done: DoneCallback,
                 inline: bool = False) -> None:
        self.index = index
        self.tracer = tracer
        self.on_done = on_done
        self.inline = inline
        self.loop = asyncio.get_running_loop() if inline else new_event_loop()
        #: The asyncio.Task running each request, until it ends (this loop's thread only);
        #: also the strong reference that keeps the task alive.
        self._by_request: dict[_request.Request, asyncio.Task[None]] = {}
        #: Requests the consumer settled and cancelled (this loop's thread only).
        self._abandoned: set[_request.Request] = set()
        self._thread = threading.Thread(target=self._run, name=f"loop-worker-{index}", daemon=True)

    def start(self) -> None:
        if not self.inline:
            self._thread.start()

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on this loop's thread: now when that is the caller's (inline)."""
        if self.inline:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            leftover = self._cancel_leftover("closing")
            if leftover:
                self.loop.run_until_complete(asyncio.wait(leftover, timeout=1.0))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, requests: Sequence[_request.Request]) -> None:
        if self.inline:  # the tasks start once the consumer yields to its loop
            self._start_many(requests)
        else:
            self.loop.call_soon_threadsafe(self._start_many, requests)

    def _start_many(self, requests: Sequence[_request.Request]) -> None:
        # No done callbacks: _execute forgets its request itself (each callback would cost a
        # turn of the loop per task).
        for req in requests:
            self._by_request[req] = self.loop.create_task(self._execute(req))

    def abandon(self, req: _request.Request, why: str) -> None:
        """Cancel the request's task (hard time limit, or terminated); from any thread (inline:
        from the consumer's, the loop's own)."""
        def cancel() -> None:
            task = self._by_request.get(req)
            if task is not None:
                self._abandoned.add(req)
                self._cancel(req, task, why)

        self._call(cancel)

    async def _execute(self, req: _request.Request) -> None:
        start = time.monotonic()
        try:
            try:
                outcome = await self.tracer.run_async(req)
            except asyncio.CancelledError:
                # Cold shutdown cancelled us: report the message for requeue, then let the
                # cancellation finish this task as it should.
                self.on_done(_request.Outcome(req, "REVOKED", None, time.monotonic() - start,
                                              requeue=True))
                raise
            except GeneratorExit:
                # The loop is being closed under a task that refused every cancellation (one
                # abandoned at its hard time limit): its outcome was settled long ago.
                raise
            except BaseException as exc:  # never let a request vanish without an outcome
                logger.exception("Internal error running %s[%s]", req.name, req.id)
                outcome = self.tracer._failed(req, exc, start, None)
            # Alone: no other task on this loop would wait while the result is stored here,
            # and the consumer has not settled this one already (a task may ignore its cancel).
            self.on_done(outcome, len(self._by_request) == 1 and req not in self._abandoned)
        finally:
            self._forget(req)

    def _cancel_leftover(self, when: str) -> list[asyncio.Task[None]]:
        """Cancel the tasks still running at the end (abandoned at their hard time limit,
        they never ended) and return them; this loop's thread only."""
        leftover = [t for t in self._by_request.values() if not t.done()]
        if leftover:
            logger.warning("Loop worker %d: %s with %d abandoned task(s) still running",
                           self.index, when, len(leftover))
            for task in leftover:
                task.cancel()
        return leftover

    def _forget(self, req: _request.Request, _task: object = None) -> None:
        self._by_request.pop(req, None)
        self._abandoned.discard(req)

    def _cancel(self, req: _request.Request, task: asyncio.Task[None], why: str | None) -> None:
        task.cancel(why)
        # A task cancelled before its first step never runs _execute's finally.
        task.add_done_callback(functools.partial(self._forget, req))

    def cancel_all(self) -> None:
        def cancel() -> None:
            for req, task in list(self._by_request.items()):
                self._cancel(req, task, None)

        self._call(cancel)

    def stop(self, timeout: float) -> None:
        if self.inline:  # the consumer's loop goes on to close the worker's connections
            self._cancel_leftover("stopping")
            return
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # loop already closed
            return
        self._thread.join(timeout)


class LoopExecutor:
    """``count`` loop worker threads, each running up to ``concurrency`` async tasks; or,
    ``inline``, one loop worker on the calling (consumer's) event loop."""

    def __init__(self, tracer: Tracer, on_done: DoneCallback, count: int, concurrency: int,
                 inline: bool = False) -> None:
        if inline and count != 1:
            raise ValueError(f"an inline loop executor has one loop worker, not {count}")
        self._workers = [_LoopWorker(i, tracer, on_done, inline) for i in range(count)]
        self.groups = [concurrency] * count
        self.starts = self.groups  # every request handed over starts at once
        #: Async tasks each loop worker runs at once.
        self.size = concurrency

    def resize(self, concurrency: int) -> None:
        """Run up to ``concurrency`` tasks on each loop from now on (consumer loop). Only
        the consumer counts them: it hands over more at once, or none until the tasks
        running beyond the new size have ended; no running task is cancelled."""
        if concurrency < 1:
            raise ValueError(f"a loop runs at least one task at once, not {concurrency}")
        self.size = concurrency
        for group in range(len(self.groups)):
            self.groups[group] = concurrency  # in place: the consumer's lane reads the list

    @property
    def loops(self) -> list[asyncio.AbstractEventLoop]:
        """Each loop worker's event loop, by index (the metrics' lag probes run on them)."""
        return [w.loop for w in self._workers]

    def start(self) -> None:
        for w in self._workers:
            w.start()

    def submit(self, group: int, requests: Sequence[_request.Request]) -> None:
        self._workers[group].submit(requests)

    def abandon(self, request: _request.Request, why: str) -> None:
        self._workers[request.slot].abandon(request, why)

    def withdraw(self, request: _request.Request) -> bool:
        return False  # never waiting: started as soon as handed over

    def cancel_all(self) -> list[_request.Request]:
        for w in self._workers:
            w.cancel_all()
        return []

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.stop(max(0.0, deadline - time.monotonic()))
