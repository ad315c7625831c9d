"""Redis/Valkey result backend: one SET+PUBLISH per result, one pub/sub reader per event loop."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import valkey.asyncio as avalkey
import valkey.exceptions as verr
from valkey.asyncio.connection import Connection, SSLConnection, parse_url
from valkey.asyncio.retry import Retry
from valkey.backoff import ExponentialBackoff

from .. import states
from ..exceptions import ConnectionLost, ImproperlyConfigured, OperationalError, TimeoutError
from .base import ResultBackend

if TYPE_CHECKING:
    from ..app.base import Celery

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

Meta = dict[str, Any]

# Atomically: unless the stored value starts with ARGV[3] (the encoded prefix of a SUCCESS
# meta), SET the key (PX ARGV[2] ms unless '0') and PUBLISH the payload on the key's channel.
# GETRANGE reads only the prefix, so a large stored result is never copied.
_STORE_SCRIPT = """
if ARGV[3] ~= '' and redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[3]) - 1) == ARGV[3] then
  return 0
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

#: Connection arguments read from transport options / constructor options.
_CONNECTION_OPTIONS = frozenset({
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "retry_on_timeout", "health_check_interval", "client_name", "username", "password",
    "max_connections", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
    "ssl_check_hostname",
})

#: Upstream Celery's setting names -> connection arguments (lowest precedence).
_CELERY_SETTINGS = {
    "redis_socket_timeout": "socket_timeout",
    "redis_socket_connect_timeout": "socket_connect_timeout",
    "redis_socket_keepalive": "socket_keepalive",
    "redis_retry_on_timeout": "retry_on_timeout",
    "redis_backend_health_check_interval": "health_check_interval",
    "redis_max_connections": "max_connections",
    "redis_client_name": "client_name",
    "redis_username": "username",
    "redis_password": "password",
}

_DRIVER_CONNECTION_ERRORS = (verr.ConnectionError, verr.TimeoutError, OSError)

#: How long the pub/sub connection may stay silent before we PING it (seconds); the
#: ``health_check_interval`` connection option overrides it.
DEFAULT_PUBSUB_HEALTH_INTERVAL = 25.0

#: How long ``close()`` waits for other threads' loops to close their clients (seconds).
CLOSE_TIMEOUT = 2.0


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``**``."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:**@{hostport}"))


def connection_kwargs(url: str, conf: Any, options: dict[str, Any]) -> dict[str, Any]:
    """valkey-py connection arguments: Celery settings < transport options < options < URL.

    Raises:
        ImproperlyConfigured: the URL cannot be parsed.
    """
    kwargs = {arg: conf.get(name) for name, arg in _CELERY_SETTINGS.items() if conf.get(name)}
    transport = conf.get("result_backend_transport_options") or {}
    for source in (transport, options):
        kwargs.update({k: v for k, v in source.items() if k in _CONNECTION_OPTIONS})
    try:
        kwargs.update(parse_url(url))
    except ValueError as exc:
        raise ImproperlyConfigured(f"Invalid Redis result backend URL {safe_url(url)!r}: {exc}") from exc
    is_ssl = issubclass(kwargs.setdefault("connection_class", Connection), SSLConnection)
    use_ssl = conf.get("redis_backend_use_ssl")
    if is_ssl and isinstance(use_ssl, dict):
        kwargs = {**use_ssl, **kwargs}
    elif not is_ssl:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}
    reqs = kwargs.get("ssl_cert_reqs")
    if isinstance(reqs, str):  # Celery spells these CERT_REQUIRED; valkey-py wants "required".
        kwargs["ssl_cert_reqs"] = reqs.lower().removeprefix("cert_")
    return kwargs


class _Channel:
    """Waiters for one task's channel. ``confirmed`` resolves when Redis confirms SUBSCRIBE."""

    __slots__ = ("confirmed", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waiters: set[asyncio.Future[Meta]] = set()
        self.confirmed: asyncio.Future[None] = loop.create_future()


class _ResultConsumer:
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
                except _DRIVER_CONNECTION_ERRORS as exc:
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
            except _DRIVER_CONNECTION_ERRORS as exc:
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


class _LoopClients:
    """The command client and the result consumer of one event loop."""

    __slots__ = ("client", "consumer")

    def __init__(self, client: avalkey.Valkey) -> None:
        self.client = client
        self.consumer: _ResultConsumer | None = None

    async def aclose(self) -> None:
        if self.consumer is not None:
            await self.consumer.aclose()
        await self.client.aclose(close_connection_pool=True)


class RedisBackend(ResultBackend):
    """Results in Redis/Valkey, in upstream Celery's layout: key and pub/sub channel are both
    ``celery-task-meta-<id>``; the value is the encoded meta with a ``result_expires`` TTL.

    Thread-safety: coroutines may be awaited on any event loop; each loop gets its own
    client and result consumer (asyncio connections are bound to their loop). ``close``
    may be called from any thread.
    """

    def __init__(self, app: Celery, url: str | None = None, **options: Any) -> None:
        super().__init__(app, url)
        if not url:
            raise ImproperlyConfigured("The Redis result backend needs a URL")
        self.safe_url = safe_url(url)
        transport = app.conf.get("result_backend_transport_options") or {}
        self._conn_kwargs = connection_kwargs(url, app.conf, options)
        prefix = transport.get("global_keyprefix")
        if prefix:  # like upstream: a separator is added unless the prefix ends with one
            self.task_keyprefix = f"{prefix if prefix[-1] in ':_-.' else prefix + '_'}celery-task-meta-"
        self.pubsub_health_interval = float(
            self._conn_kwargs.get("health_check_interval") or DEFAULT_PUBSUB_HEALTH_INTERVAL
        )
        self._ttl_ms = str(int(self.expires * 1000)) if self.expires else "0"
        # Stored JSON metas start with the status (upstream's key order), so this prefix
        # identifies a stored SUCCESS without decoding it.
        self._success_prefix = (
            self.encode({"status": states.SUCCESS})[:-1] if self.serializer == "json" else None
        )
        # _lock guards _loops, touched by coroutines on every loop and by close() from any
        # thread. Only dict lookups/updates happen under it, never I/O.
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClients] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # -- connections ----------------------------------------------------------------------

    def _clients(self) -> _LoopClients:
        """The running loop's clients, created on first use. Call on that loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._loops.get(loop)
            if clients is None:
                for old in [lp for lp in self._loops if lp.is_closed()]:
                    del self._loops[old]  # their connections died with their loop
                clients = self._loops[loop] = _LoopClients(self._new_client())
            return clients

    def _new_client(self) -> avalkey.Valkey:
        kwargs = dict(self._conn_kwargs)
        # A pooled connection the server dropped is only noticed when used: retry a command
        # that failed on a broken connection, on a new one. Every command here may run twice
        # (GET, MGET, DEL; the store script rewrites the same value and publishes it again).
        kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.02), 2))
        kwargs.setdefault("retry_on_error", [verr.ConnectionError, verr.TimeoutError])
        pool = avalkey.ConnectionPool(**kwargs)
        return avalkey.Valkey(connection_pool=pool)

    def new_pubsub_connection(self) -> Connection:
        """A fresh, unconnected connection for a result consumer (no read timeout: the
        consumer PINGs it when idle instead)."""
        kwargs = dict(self._conn_kwargs)
        cls = kwargs.pop("connection_class")
        kwargs.pop("max_connections", None)
        kwargs["socket_timeout"] = None
        kwargs["health_check_interval"] = 0
        return cls(**kwargs)

    @contextlib.contextmanager
    def _driver_errors(self) -> Iterator[None]:
        try:
            yield
        except _DRIVER_CONNECTION_ERRORS as exc:
            raise ConnectionLost(f"Redis result backend {self.safe_url}: {exc}") from exc
        except verr.ValkeyError as exc:
            raise OperationalError(f"Redis result backend {self.safe_url}: {exc}") from exc

    # -- storage --------------------------------------------------------------------------

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Store and publish every item in one pipelined round trip (any loop).

        Like upstream, a stored SUCCESS is never overwritten (a redelivered task must not
        clobber its result), and a skipped write is not published either. Upstream GETs
        first (a race, and a second round trip); we check atomically in a Lua script. With
        non-JSON serializers the check needs a decode, so those GET first, as upstream does.
        """
        client = self._clients().client
        with self._driver_errors():
            guard = self._success_prefix
            if guard is None:
                items = await self._without_stored_success(client, items)
                guard = b""
            pipe = client.pipeline(transaction=False)
            for task_id, payload, _state in items:
                key = self.get_key_for_task(task_id)
                pipe.eval(_STORE_SCRIPT, 1, key, payload, self._ttl_ms, guard)  # type: ignore[arg-type]  # bytes are fine
            await pipe.execute()

    async def _without_stored_success(
        self, client: avalkey.Valkey, items: Sequence[tuple[str, bytes, str]]
    ) -> list[tuple[str, bytes, str]]:
        stored = await client.mget([self.get_key_for_task(tid) for tid, _, _ in items])
        return [item for item, raw in zip(items, stored, strict=True) if not self._is_success(raw)]

    def _is_success(self, raw: bytes | None) -> bool:
        try:
            return raw is not None and self.decode(raw).get("status") == states.SUCCESS
        except Exception:  # undecodable: not a SUCCESS we must keep
            return False

    async def aget_raw(self, task_id: str) -> bytes | None:
        """The stored payload or None (any loop)."""
        with self._driver_errors():
            return await self._clients().client.get(self.get_key_for_task(task_id))

    async def adelete(self, task_id: str) -> None:
        """Forget the task's result (any loop)."""
        with self._driver_errors():
            await self._clients().client.delete(self.get_key_for_task(task_id))

    async def await_ready(self, task_id: str, timeout: float | None) -> Meta:
        """Wait for a ready state through the loop's shared pub/sub consumer (any loop).

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
            celery.exceptions.ConnectionLost: Redis could not be read.
        """
        # One GET first: a result that is already there (the usual get() after the work is
        # done) costs one round trip, not SUBSCRIBE + GET + UNSUBSCRIBE.
        meta = await self.aget_task_meta(task_id)
        if meta["status"] in states.READY_STATES:
            return meta
        if timeout is not None and timeout <= 0:
            raise TimeoutError("The operation timed out.")
        clients = self._clients()
        if clients.consumer is None:
            clients.consumer = _ResultConsumer(self, clients.client)
        try:
            async with asyncio.timeout(timeout):
                with self._driver_errors():
                    return await clients.consumer.wait(task_id)
        except builtins.TimeoutError:
            raise TimeoutError("The operation timed out.") from None

    async def ping(self) -> None:
        """Raise ConnectionLost unless Redis answers PING (any loop)."""
        with self._driver_errors():
            await self._clients().client.ping()

    async def aclose(self) -> None:
        """Close the running loop's client and consumer."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._loops.pop(loop, None)
        if clients is not None:
            await clients.aclose()

    def close(self) -> None:
        """Close every loop's clients; from any thread, idempotent.

        Another thread's running loop gets the close scheduled on it (hand-off through
        ``run_coroutine_threadsafe``) and we wait up to CLOSE_TIMEOUT for it, so that
        ``close(); portal.stop()`` leaves nothing pending. The caller's own loop gets a
        task (we must not block it). Clients of stopped or closed loops are dropped.
        """
        with self._lock:
            loops, self._loops = self._loops, {}
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        pending = []
        for loop, clients in loops.items():
            if loop is current:
                self._close_soon(clients)
            elif loop.is_running() and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    pending.append(asyncio.run_coroutine_threadsafe(clients.aclose(), loop))
        concurrent.futures.wait(pending, timeout=CLOSE_TIMEOUT)

    def _close_soon(self, clients: _LoopClients) -> None:
        """Start closing ``clients`` as a task on the running loop (their own loop)."""
        task = asyncio.get_running_loop().create_task(clients.aclose())
        with self._lock:  # _closing keeps the tasks alive; close() may run on any thread
            self._closing.add(task)
        task.add_done_callback(self._closing_done)

    def _closing_done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._closing.discard(task)

