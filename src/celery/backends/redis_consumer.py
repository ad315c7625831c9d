"""The Redis result backend's pub/sub side: every result wait on one event loop shares one
connection."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import valkey.asyncio as avalkey
import valkey.exceptions as verr
from valkey.asyncio.connection import Connection

from .. import states
from ..exceptions import ConnectionLost
from ..transport.redis_publish import RETRYABLE

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["DRIVER_CONNECTION_ERRORS", "ResultConsumer"]

logger = logging.getLogger(__name__)

Meta = dict[str, Any]

#: The driver errors that mean a broken or unreachable connection (sync and async alike):
#: the ones the Redis transport retries.
DRIVER_CONNECTION_ERRORS = RETRYABLE


class _Channel:
    """Waiters for one task's channel. ``confirmed`` resolves when Redis confirms SUBSCRIBE."""

    __slots__ = ("confirmed", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waiters: set[asyncio.Future[Meta]] = set()
        self.confirmed: asyncio.Future[None] = loop.create_future()


class ResultConsumer:
    """Every ``await_ready`` on one event loop, multiplexed over ONE pub/sub connection.

    Loop-bound and lock-free: create and use it only on its own loop. A reader task reads the
    connection and resolves waiter futures; a writer task sends (UN)SUBSCRIBE commands in the
    order they were queued (queueing is synchronous, so a waiter's cleanup never awaits).
    If the connection drops, the reader reconnects, resubscribes every channel and re-reads
    their keys, so a result published while it was down is still delivered.
    """

    def __init__(self, backend: RedisBackend, client: avalkey.Valkey) -> None:
        self._backend = backend
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._channels: dict[bytes, _Channel] = {}
        # Futures for SUBSCRIBE replies not yet received, per channel, in the order the
        # commands were sent: Redis answers each channel's SUBSCRIBEs in that order.
        self._expect: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._conn: Connection | None = None
        self._outbox: list[tuple[Any, ...]] = []
        self._outbox_ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._failures = 0
        self._closed = False

    async def wait(self, task_id: str) -> Meta:
        """Return the task's meta once it is ready (wrap in a timeout to bound the wait)."""
        channel = self._backend.get_key_for_task(task_id).encode()
        fut: asyncio.Future[Meta] = self._loop.create_future()
        entry = self._add_waiter(channel, fut)
        try:
            # Shielded: one waiter's cancellation must not cancel the shared confirmation.
            await asyncio.shield(entry.confirmed)
            if not fut.done():
                meta = await self._backend.aget_task_meta(task_id)
                if meta["status"] in states.READY_STATES:
                    return meta
            return await fut
        finally:
            self._remove_waiter(channel, fut)

    def _add_waiter(self, channel: bytes, fut: asyncio.Future[Meta]) -> _Channel:
        if self._closed:
            raise ConnectionLost(f"Redis result backend {self._backend.safe_url} is closed")
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_task(self._run(), name="celery-result-consumer")
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel(self._loop)
            if self._conn is not None:  # else the (re)connect subscribes every channel
                self._expect.setdefault(channel, deque()).append(entry.confirmed)
                self._send("SUBSCRIBE", channel)
        entry.waiters.add(fut)
        return entry

    def _remove_waiter(self, channel: bytes, fut: asyncio.Future[Meta]) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        entry.waiters.discard(fut)
        if not entry.waiters:
            del self._channels[channel]
            if self._conn is not None:
                self._send("UNSUBSCRIBE", channel)

    def _send(self, *command: Any) -> None:
        self._outbox.append(command)
        self._outbox_ready.set()

    # -- reader / writer (tasks on this loop) ---------------------------------------------

    async def _run(self) -> None:
        """Reader: serve connections, reconnecting with backoff while anyone waits."""
        resync = False
        try:
            while True:
                try:
                    await self._serve(resync)
                except DRIVER_CONNECTION_ERRORS as exc:
                    self._failures += 1
                    if not self._channels:
                        return  # nobody waits; the next waiter starts a new reader
                    # First retry at once (a killed connection); then back off up to 2 s.
                    delay = min(2.0, 0.025 * 2 ** min(self._failures, 7)) if self._failures > 1 else 0
                    logger.warning("Result consumer lost %s (%s); reconnecting in %.2fs",
                                   self._backend.safe_url, exc, delay)
                    await asyncio.sleep(delay)
                    resync = True
        except Exception as exc:  # a bug: fail the waiters rather than leave them hanging
            logger.exception("Result consumer for %s failed", self._backend.safe_url)
            self._fail_all(ConnectionLost(f"Result consumer failed: {exc!r}"))

    async def _serve(self, resync: bool) -> None:
        """One connection's lifetime: connect, subscribe all channels, read until it fails."""
        conn = self._backend.new_pubsub_connection()
        writer: asyncio.Task[None] | None = None
        try:
            await conn.connect()
            self._failures = 0
            self._conn, self._outbox = conn, []
            self._expect.clear()
            pending = self._resubscribe_all()
            writer = self._loop.create_task(self._write(conn), name="celery-result-writer")
            if resync and pending:
                self._resync_task = self._loop.create_task(self._resync(pending))
            await self._read(conn, writer)
        finally:
            self._conn = None
            for task in (writer, self._resync_task):  # resync waits on replies from conn
                if task is not None:
                    task.cancel()
            await conn.disconnect(nowait=True)

    def _resubscribe_all(self) -> dict[bytes, asyncio.Future[None]]:
        pending = {}
        for channel, entry in self._channels.items():
            fut = entry.confirmed if not entry.confirmed.done() else self._loop.create_future()
            self._expect[channel] = deque([fut])
            pending[channel] = fut
        if pending:
            self._send("SUBSCRIBE", *pending)
        return pending

    async def _resync(self, pending: dict[bytes, asyncio.Future[None]]) -> None:
        """After a reconnect: once resubscribed, GET every key and deliver ready results."""
        await asyncio.gather(*pending.values())
        for attempt in itertools.count(1):
            channels = [c for c in pending if c in self._channels]
            if not channels:
                return
            try:
                payloads = await self._client.mget(channels)
            except DRIVER_CONNECTION_ERRORS as exc:
                logger.warning("Result consumer could not re-read keys (%s); retrying", exc)
                await asyncio.sleep(min(2.0, 0.05 * attempt))
                continue
            for channel, payload in zip(channels, payloads, strict=True):
                if payload is not None:
                    self._deliver(channel, payload)
            return

    async def _write(self, conn: Connection) -> None:
        """Writer: send queued commands in order, coalesced into one write."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            if batch:
                await conn.send_packed_command(conn.pack_commands(batch), check_health=False)

    async def _read(self, conn: Connection, writer: asyncio.Task[None]) -> None:
        interval = self._backend.pubsub_health_interval
        pinged = False
        while True:
            reply = await conn.read_response(timeout=interval)
            if writer.done():  # a failed write means a broken connection
                writer.result()
                raise verr.ConnectionError("pub/sub writer stopped")
            if reply is None:  # silent for `interval`: PING once, give up the second time
                if pinged:
                    raise verr.TimeoutError(f"no PING reply within {interval}s")
                pinged = True
                self._send("PING")
                continue
            pinged = False
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel = reply[0], reply[1]
        if kind == b"message":
            self._deliver(channel, reply[2])
        elif kind == b"subscribe":
            expected = self._expect.get(channel)
            if expected:
                fut = expected.popleft()
                if not expected:
                    del self._expect[channel]
                if not fut.done():
                    fut.set_result(None)

    def _deliver(self, channel: bytes, payload: bytes) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        task_id = channel.decode()[len(self._backend.task_keyprefix):]
        try:
            meta = self._backend.meta_from_payload(task_id, payload)
        except Exception:
            logger.warning("Ignoring undecodable result for %s", task_id, exc_info=True)
            return
        if meta.get("status") not in states.READY_STATES:
            return  # STARTED, RETRY, PROGRESS...: keep waiting
        for fut in entry.waiters:
            if not fut.done():
                fut.set_result(dict(meta))

    def _fail_all(self, exc: BaseException) -> None:
        for entry in self._channels.values():
            futures: list[asyncio.Future[Any]] = [entry.confirmed, *entry.waiters]
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: nobody may be left to await it

    async def aclose(self) -> None:
        """Stop the tasks, drop the connection, fail remaining waiters. On its own loop."""
        self._closed = True
        tasks = [t for t in (self._reader, self._resync_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._fail_all(ConnectionLost(f"Redis result backend {self._backend.safe_url} was closed"))
