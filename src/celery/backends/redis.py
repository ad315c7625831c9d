"""Redis/Valkey result backend: SET+PUBLISH per result (a batch per script call), one pub/sub
reader per event loop."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import valkey.asyncio as avalkey
import valkey.exceptions as verr
from valkey.asyncio.connection import Connection, SSLConnection, parse_url
from valkey.asyncio.retry import Retry
from valkey.backoff import ExponentialBackoff

from .. import states
from ..exceptions import ConnectionLost, ImproperlyConfigured, OperationalError, TimeoutError
from ..transport.redis_aio import ConnectionPool, direct_write
from .base import Conf, ResultBackend
from .readahead import SentResults
from .redis_chords import LoopParts, RedisChords
from .redis_consumer import DRIVER_CONNECTION_ERRORS, ResultConsumer
from .redis_sync import SyncSide

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

Meta = dict[str, Any]

# Stores a batch of results in one command. For each KEYS[i], atomically: unless the stored
# value starts with ARGV[2] (the encoded prefix of a SUCCESS meta; '' checks nothing), SET
# it to ARGV[2 + i] (PX ARGV[1] ms unless '0') and PUBLISH that payload on the key's channel.
# GETRANGE reads only the prefix, so a large stored result is never copied.
_STORE_SCRIPT = """
local ttl, guard, n = ARGV[1], ARGV[2], string.len(ARGV[2])
for i, key in ipairs(KEYS) do
  if guard == '' or redis.call('GETRANGE', key, 0, n - 1) ~= guard then
    if ttl ~= '0' then
      redis.call('SET', key, ARGV[2 + i], 'PX', ttl)
    else
      redis.call('SET', key, ARGV[2 + i])
    end
    redis.call('PUBLISH', key, ARGV[2 + i])
  end
end
return 0
"""
_STORE_SHA = hashlib.sha1(_STORE_SCRIPT.encode()).hexdigest()
#: Results per script call: bounds how long one call keeps Redis busy.
_STORE_BATCH = 256

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


class _LoopClients:
    """The command client, the result consumer and the chord reports of one event loop."""

    __slots__ = ("backend", "client", "consumer", "parts")

    def __init__(self, backend: RedisBackend, client: avalkey.Valkey) -> None:
        self.backend = backend
        self.client = client
        self.consumer: ResultConsumer | None = None
        self.parts: LoopParts | None = None

    def chord_parts(self) -> LoopParts:
        if self.parts is None:
            self.parts = LoopParts(self.client, self.backend._driver_errors)
        return self.parts

    def result_consumer(self) -> ResultConsumer:
        if self.consumer is None:
            self.consumer = ResultConsumer(self.backend, self.client)
        return self.consumer

    async def aclose(self) -> None:
        if self.consumer is not None:
            await self.consumer.aclose()
        await self.client.aclose(close_connection_pool=True)


class RedisBackend(RedisChords, ResultBackend):
    """Results in Redis/Valkey, in upstream Celery's layout: key and pub/sub channel are both
    ``celery-task-meta-<id>``; the value is the encoded meta with a ``result_expires`` TTL.

    Thread-safety: coroutines may be awaited on any event loop; each loop gets its own
    client and result consumer (asyncio connections are bound to their loop). ``close``
    may be called from any thread.
    """

    def __init__(self, conf: Conf, url: str | None = None, **options: Any) -> None:
        super().__init__(conf, url, **options)
        if not url:
            raise ImproperlyConfigured("The Redis result backend needs a URL")
        self.safe_url = safe_url(url)
        transport = conf.get("result_backend_transport_options") or {}
        self._conn_kwargs = connection_kwargs(url, conf, self.options)
        prefix = transport.get("global_keyprefix")
        if prefix:  # like upstream: a separator is added unless the prefix ends with one
            prefix = prefix if prefix[-1] in ":_-." else prefix + "_"
            self.task_keyprefix = f"{prefix}celery-task-meta-"
            self.group_keyprefix = f"{prefix}celery-taskset-meta-"
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
        #: Tasks sent from this process: their results are read ahead in batches.
        self.sent = SentResults()
        self._sync: SyncSide | None = None  # made on first use, under _lock

    # -- connections ----------------------------------------------------------------------

    def _clients(self) -> _LoopClients:
        """The running loop's clients, created on first use. Call on that loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._loops.get(loop)
            if clients is None:
                for old in [lp for lp in self._loops if lp.is_closed()]:
                    del self._loops[old]  # their connections died with their loop
                clients = self._loops[loop] = _LoopClients(self, self._new_client())
            return clients

    def _new_client(self) -> avalkey.Valkey:
        kwargs = dict(self._conn_kwargs)
        # A pooled connection the server dropped is only noticed when used: retry a command
        # that failed on a broken connection, on a new one. Every command here may run twice
        # (GET, MGET, DEL; the store script rewrites the same value and publishes it again).
        kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.02), 2))
        kwargs.setdefault("retry_on_error", [verr.ConnectionError, verr.TimeoutError])
        # Without valkey-py's loop turns per command (see transport/redis_aio.py).
        kwargs["connection_class"] = direct_write(kwargs["connection_class"])
        return avalkey.Valkey(connection_pool=ConnectionPool(**kwargs))

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
        except DRIVER_CONNECTION_ERRORS as exc:
            raise ConnectionLost(f"Redis result backend {self.safe_url}: {exc}") from exc
        except verr.ValkeyError as exc:
            raise OperationalError(f"Redis result backend {self.safe_url}: {exc}") from exc

    # -- storage --------------------------------------------------------------------------

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Store and publish the items, up to 256 in one script call (any loop).

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
            for start in range(0, len(items), _STORE_BATCH):
                args = self._store_args(items[start:start + _STORE_BATCH], guard)
                try:
                    await client.execute_command("EVALSHA", _STORE_SHA, *args)
                except verr.NoScriptError:
                    await client.execute_command("EVAL", _STORE_SCRIPT, *args)

    def _store_args(self, batch: Sequence[tuple[str, bytes, str]], guard: bytes) -> list[Any]:
        """The store script's arguments (after the script) for ``batch``."""
        return [len(batch), *(self.get_key_for_task(tid) for tid, _, _ in batch),
                self._ttl_ms, guard, *(payload for _, payload, _ in batch)]

    def store_now(self, task_id: str, payload: bytes, state: str) -> bool:
        """``_aset_many`` of one result on the calling thread's blocking client (any thread),
        with the same script. Only for JSON metas: other serializers need the read first
        (``_without_stored_success``), and are left to ``_aset_many``.

        Raises:
            celery.exceptions.ConnectionLost, OperationalError: the write failed.
        """
        guard = self._success_prefix
        if guard is None:
            return False
        with self._driver_errors():
            self._sync_side().run_script(_STORE_SHA, _STORE_SCRIPT,
                                         self._store_args([(task_id, payload, state)], guard))
        return True

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

    async def aget_many_raw(self, task_ids: Sequence[str]) -> dict[str, bytes | None]:
        """Stored payloads of several tasks in one MGET (any loop)."""
        with self._driver_errors():
            raws = await self._clients().client.mget([self.get_key_for_task(t) for t in task_ids])
        return dict(zip(task_ids, raws, strict=True))

    async def adelete(self, task_id: str) -> None:
        """Forget the task's result (any loop)."""
        await self.adelete_many([task_id])

    async def adelete_many(self, task_ids: Sequence[str]) -> None:
        """Forget several results: one DEL per 1,000 (any loop)."""
        for task_id in task_ids:
            self.sent.forget(task_id)
        keys = [self.get_key_for_task(t) for t in task_ids]
        with self._driver_errors():
            for start in range(0, len(keys), 1000):
                await self._clients().client.delete(*keys[start:start + 1000])

    def on_sent(self, result: Any) -> None:
        """Note a task sent from this process, for read-ahead (any thread)."""
        self.sent.sent(result)

    def _sync_side(self) -> SyncSide:
        with self._lock:
            if self._sync is None:
                self._sync = SyncSide(self, self._conn_kwargs)
            return self._sync

    async def aget_task_meta(self, task_id: str) -> Meta:
        meta = self.sent.peek(task_id)
        return meta if meta is not None else await super().aget_task_meta(task_id)

    def get_task_meta(self, task_id: str) -> Meta:
        """The task's meta, read on the calling thread (any thread, no loop needed)."""
        meta = self.sent.peek(task_id)
        if meta is not None:
            return meta
        with self._driver_errors():
            return self.meta_from_payload(task_id, self._sync_side().read([task_id])[0])

    def wait_for(self, task_id: str, timeout: float | None = None) -> Meta:
        """``await_ready`` for sync callers, on the calling thread (see redis_sync.py).

        The read-ahead MGET and the wait itself use blocking connections, without a hop to
        the portal loop; if the wait loses its connection, it goes on there (that consumer
        reconnects and re-reads) for the rest of ``timeout``. This process's pipelined
        publishes are confirmed before it blocks, so a refused message raises at once.
        """
        meta = self.sent.take(task_id)
        if meta is not None:
            return meta
        sync = self._sync_side()
        started = time.monotonic()
        ids = self.sent.batch(task_id)

        def first_read() -> Meta:
            return self.sent.absorb(ids, sync.read(ids), self.meta_from_payload)

        def left() -> float | None:
            return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

        with self._driver_errors():
            if timeout is not None and timeout <= 0:
                meta = first_read()
                if meta["status"] in states.READY_STATES:
                    return meta
                self.confirm_published()
                raise TimeoutError("The operation timed out.")
            try:
                return sync.wait(task_id, left(), first_read, self.confirm_published,
                                 read_ahead=len(ids) > 1)
            except DRIVER_CONNECTION_ERRORS as exc:
                logger.warning("Waiting for %s on %s failed (%s); retrying on the portal loop",
                               task_id, self.safe_url, exc)
        return super().wait_for(task_id, left())

    async def await_ready(self, task_id: str, timeout: float | None) -> Meta:
        """Wait for a ready state through the loop's shared pub/sub consumer (any loop).

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
            celery.exceptions.ConnectionLost: Redis could not be read.
        """
        meta = self.sent.take(task_id)
        if meta is not None:
            return meta
        # One read first (with the read-ahead of results sent after this one): a result
        # that is already there costs one round trip, not SUBSCRIBE + GET + UNSUBSCRIBE.
        ids = self.sent.batch(task_id)
        raws = await self.aget_many_raw(ids)
        meta = self.sent.absorb(ids, [raws[t] for t in ids], self.meta_from_payload)
        if meta["status"] in states.READY_STATES:
            return meta
        if timeout is not None and timeout <= 0:
            raise TimeoutError("The operation timed out.")
        clients = self._clients()
        try:
            async with asyncio.timeout(timeout):
                with self._driver_errors():
                    return await clients.result_consumer().wait(task_id)
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
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
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
        super().close()

    def _close_soon(self, clients: _LoopClients) -> None:
        """Start closing ``clients`` as a task on the running loop (their own loop)."""
        task = asyncio.get_running_loop().create_task(clients.aclose())
        with self._lock:  # _closing keeps the tasks alive; close() may run on any thread
            self._closing.add(task)
        task.add_done_callback(self._closing_done)

    def _closing_done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._closing.discard(task)

