"""The client side of ``rpc://``: an app's reply queue, consumed on the app's portal loop.

Every task an app sends carries ``reply_to`` = the app's id (``app.oid``, the name of
this queue) and ``correlation_id`` = its task id; a worker sends each state it
stores for the task there as one message (see rpc.py). The queue is declared before the
first task is sent (``declare``), and consumed from the first read on (``start``), without
acks, as upstream Celery consumes it: its messages are then this process's only copy.

``Replies`` keeps the latest state of each task it heard of (a task's states arrive in the
order the worker sent them; a final state is never replaced by an interim one that
arrives late or twice, nor a success by anything) until ``forget``, up to ``MAX_KEPT`` tasks, dropping the oldest
past that with a warning. Waiters register a ``concurrent.futures.Future`` per task, which
the consumer resolves when a final state arrives: a sync ``get()`` blocks on it in its own
thread; ``await`` on any loop wraps it (``asyncio.wrap_future``).

Thread-safety: ``_lock`` guards ``_metas`` and ``_waiters`` (the consumer on the portal
loop writes them, waiters on any thread read them); ``_started`` is set once consuming
began (``threading.Event``). ``_declared``, ``_starting`` and the channel are used on the
portal loop only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import states
from ..exceptions import ConnectionLost
from ..messaging import serialization

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

    from ..transport.amqp_connection import Connections

__all__ = ["MAX_KEPT", "Replies"]

logger = logging.getLogger(__name__)

Meta = dict[str, Any]

#: Tasks whose latest state is kept (read or not) before the oldest are dropped.
MAX_KEPT = 100_000
#: Seconds ``start`` waits for the messages already in the queue to arrive.
BACKLOG_WAIT = 2.0


class Replies:
    """This process's reply queue and the states it brought (see the module docstring)."""

    def __init__(self, connections: Connections, queue: str, arguments: dict[str, Any],
                 accept: frozenset[str], to_meta: Callable[[str, Any], Meta]) -> None:
        """Args:
            connections: the AMQP connections (one per loop) to the broker.
            queue: the reply queue's name (this process's ``reply_to``).
            arguments: its declaration's arguments (``x-expires``).
            accept: content types accepted (``result_accept_content``).
            to_meta: checks a decoded message and turns its exception back into one.
        """
        self._connections = connections
        self.queue = queue
        self._arguments = arguments
        self._accept = accept
        self._to_meta = to_meta
        self._lock = threading.Lock()
        self._metas: OrderedDict[str, Meta] = OrderedDict()
        self._waiters: dict[str, list[concurrent.futures.Future[Meta]]] = {}
        self._started = threading.Event()
        self._declared = False
        self._starting: asyncio.Future[None] | None = None
        self._dropped_logged = False
        self._backlog = 0
        self._backlog_done: asyncio.Event | None = None

    @property
    def started(self) -> bool:
        return self._started.is_set()

    # -- portal loop ------------------------------------------------------------------------

    async def _declare(self) -> Any:
        channel = await self._connections.channel("rpc")
        try:
            # As upstream (Celery 5.7): durable, auto-deleted once its consumer is gone, and
            # x-expires = result_expires. Durable because RabbitMQ 4.3 refuses transient
            # non-exclusive queues; not exclusive because publishers use other connections.
            return await channel.declare_queue(self.queue, durable=True, auto_delete=True,
                                               arguments=self._arguments)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connections.forget_channel("rpc")
            raise ConnectionLost(f"Cannot declare the rpc:// reply queue {self.queue} on "
                                 f"{self._connections.params.safe_url}: {exc}") from exc

    async def declare(self) -> None:
        """Declare the reply queue (portal loop), once: before the first task is sent."""
        if not self._declared:
            await self._declare()
            self._declared = True

    async def start(self) -> None:
        """Consume the reply queue (portal loop); returns once the messages that were in it
        have arrived (at most ``BACKLOG_WAIT`` seconds). Idempotent."""
        if self._started.is_set():
            return
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_future()
            try:
                queue = await self._declare()
                self._declared = True
                self._backlog = int(getattr(queue.declaration_result, "message_count", 0) or 0)
                self._backlog_done = asyncio.Event()
                if not self._backlog:
                    self._backlog_done.set()
                await queue.consume(self._on_message, no_ack=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BACKLOG_WAIT):
                        await self._backlog_done.wait()
            except BaseException as exc:
                starting, self._starting = self._starting, None
                if isinstance(exc, Exception):
                    starting.set_exception(exc)
                    starting.exception()  # retrieved: whoever waits on it raises it
                else:
                    starting.cancel()
                raise
            self._started.set()
            self._starting.set_result(None)
        else:
            await asyncio.shield(self._starting)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._backlog:
            self._backlog -= 1
            if not self._backlog and self._backlog_done is not None:
                self._backlog_done.set()
        try:
            decoded = serialization.loads(message.body, message.content_type,
                                          message.content_encoding, accept=self._accept)
            task_id = message.correlation_id or (
                decoded.get("task_id") if isinstance(decoded, dict) else None)
            if not isinstance(task_id, str) or not task_id:
                raise ValueError("neither a correlation_id nor a task_id")
            meta = self._to_meta(task_id, decoded)
        except Exception as exc:
            logger.error("Dropped a message on the rpc:// reply queue %s: %s", self.queue, exc)
            return
        self.arrived(task_id, meta)

    # -- any thread -------------------------------------------------------------------------

    def arrived(self, task_id: str, meta: Meta) -> None:
        """Record a state of ``task_id`` and resolve its waiters if it is final."""
        ready = meta.get("status") in states.READY_STATES
        with self._lock:
            old = self._metas.get(task_id)
            if old is not None and (old.get("status") == states.SUCCESS or (
                    not ready and old.get("status") in states.READY_STATES)):
                return  # a late or repeated state: a success stays, as in every backend
            self._metas[task_id] = meta
            self._metas.move_to_end(task_id)
            while len(self._metas) > MAX_KEPT:
                dropped, _ = self._metas.popitem(last=False)
                if not self._dropped_logged:
                    self._dropped_logged = True
                    logger.warning("rpc:// keeps the states of %d tasks at most: dropped the "
                                   "oldest (%s); read results you wait for, or forget() them",
                                   MAX_KEPT, dropped)
            waiters = self._waiters.pop(task_id, ()) if ready else ()
        for future in waiters:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_result(meta)

    def latest(self, task_id: str) -> Meta | None:
        """The latest state heard of ``task_id``, or None."""
        with self._lock:
            return self._metas.get(task_id)

    def waiter(self, task_id: str) -> tuple[Meta | None, concurrent.futures.Future[Meta] | None]:
        """``(final meta, None)`` if the task is done, else ``(None, a future)`` resolved when
        it is (give it back with ``unwait``)."""
        with self._lock:
            meta = self._metas.get(task_id)
            if meta is not None and meta.get("status") in states.READY_STATES:
                return meta, None
            future: concurrent.futures.Future[Meta] = concurrent.futures.Future()
            self._waiters.setdefault(task_id, []).append(future)
            return None, future

    def unwait(self, task_id: str, future: concurrent.futures.Future[Meta]) -> None:
        with self._lock:
            waiting = self._waiters.get(task_id)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(future)
                if not waiting:
                    del self._waiters[task_id]

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._metas.pop(task_id, None)
