"""The Redis result backend for sync callers: reads and waits on the caller's own thread.

``AsyncResult.get()`` from plain code used to hop to the app's portal loop and back for
every read; here the calling thread talks to Redis itself over blocking connections, so a
result that is already there costs one round trip and no thread switch.

A wait subscribes to the task's channel on a connection of its own. With RESP3 (Redis 6 and
later, Valkey), a subscribed connection may still send any command, so the wait writes
SUBSCRIBE and GET of the key together: Redis runs them in order, so either the GET finds the
result or the PUBLISH that stores it comes after the subscription and reaches us. One round
trip, where RESP2 needs two (SUBSCRIBE, then once it is confirmed, GET on another
connection, because the first read may have come before the subscription took effect).
A server without RESP3 (HELLO unknown) gets the RESP2 way.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import valkey
import valkey.connection
import valkey.exceptions as verr
from valkey.backoff import ExponentialBackoff
from valkey.retry import Retry

from .. import states
from ..exceptions import TimeoutError
from .redis_consumer import DRIVER_CONNECTION_ERRORS

if TYPE_CHECKING:
    from valkey.connection import AbstractConnection

    from .redis import RedisBackend

__all__ = ["SyncSide"]

Meta = dict[str, Any]

#: Longest single blocking read while waiting (seconds); the wait loops until its deadline.
READ_SLICE = 1.0

#: Idle pub/sub connections kept for later waits.
KEEP_PUBSUBS = 4

#: Longest connect or reply wait of ``run_script`` (seconds, unless configured shorter): a
#: worker thread writing a result itself gives up soon and leaves it to the flusher.
SCRIPT_TIMEOUT = 1.0

_READY = states.READY_STATES


class SyncSide:
    """Blocking valkey-py clients for sync callers. Thread-safe: the connection pool is
    (valkey-py's pool locks itself), and ``_lock`` guards the list of idle pub/sub
    connections and ``_resp3``; a pub/sub connection is used by one waiting thread at a time.
    """

    def __init__(self, backend: RedisBackend, conn_kwargs: dict[str, Any]) -> None:
        self._backend = backend
        kwargs = dict(conn_kwargs)
        # parse_url gave valkey.asyncio's connection classes; take the blocking twins.
        kwargs["connection_class"] = getattr(valkey.connection, kwargs["connection_class"].__name__)
        kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.02), 2))
        kwargs.setdefault("retry_on_error", [verr.ConnectionError, verr.TimeoutError])
        self.client = valkey.Valkey(connection_pool=valkey.ConnectionPool(**kwargs))
        # run_script's own connection: short timeouts, no retry (its callers have a fallback).
        bounded = {k: min(kwargs.get(k) or SCRIPT_TIMEOUT, SCRIPT_TIMEOUT)
                   for k in ("socket_timeout", "socket_connect_timeout")}
        pool = valkey.ConnectionPool(**{**kwargs, **bounded, "retry": None,
                                        "retry_on_error": None, "retry_on_timeout": False})
        self._scripts = _ScriptConnection(lambda: pool.connection_class(**pool.connection_kwargs))
        self._lock = threading.Lock()
        #: Idle pub/sub connections, each with the channel it is still subscribed to.
        self._idle: list[tuple[AbstractConnection, bytes]] = []
        self._pid = os.getpid()  # idle pub/sub sockets must not be shared with a forked child
        #: Whether waits use RESP3 (None: not known until the first connection).
        self._resp3: bool | None = None

    def read(self, task_ids: list[str]) -> list[bytes | None]:
        """The stored payloads of ``task_ids``, in one round trip."""
        keys = [self._backend.get_key_for_task(t) for t in task_ids]
        if len(keys) == 1:
            return [cast("bytes | None", self.client.get(keys[0]))]
        return cast("list[bytes | None]", self.client.mget(keys))

    def run_script(self, sha: str, script: str, args: list[Any]) -> Any:
        """EVALSHA, or EVAL if Redis does not have the script yet; at most about
        ``SCRIPT_TIMEOUT`` per connect or reply (see ``_ScriptConnection``)."""
        return self._scripts.run(sha, script, args)

    def wait(self, task_id: str, timeout: float | None, first_read: Callable[[], Meta],
             before_blocking: Callable[[], Any], read_ahead: bool = True) -> Meta:
        """Block until the task is ready.

        SUBSCRIBE to its channel (with RESP3, and GET of its key) is written first, and
        ``first_read()`` (the read-ahead MGET) runs while Redis answers: a result already
        there costs one round trip. With RESP3 and nothing to read ahead (``read_ahead``
        False: ``first_read`` would read this task's key alone) the GET alone does that
        job, and ``first_read`` is not called. If the task is not ready,
        ``before_blocking()`` runs, then the wait reads the connection: the GET's reply, or
        with RESP2 a GET once the subscription is confirmed, then the PUBLISH. The channel
        stays subscribed after the wait: the next wait on that connection unsubscribes it
        first, so that the caller gets its result one write sooner. A connection kept idle
        that the server closed meanwhile is replaced once.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
            ConnectionError/TimeoutError/OSError of the driver: the caller falls back.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self._backend.get_key_for_task(task_id).encode()
        while True:
            conn, stale = self._checkout()
            clean = False
            try:
                meta = self._wait_on(conn, stale, task_id, channel, deadline, first_read,
                                     before_blocking, read_ahead)
                clean = True
                return meta
            except DRIVER_CONNECTION_ERRORS:
                if stale is None:  # a new connection failed: nothing to replace
                    raise
            finally:
                self._checkin(conn, channel, clean)

    def _wait_on(self, conn: AbstractConnection, stale: bytes | None, task_id: str,
                 channel: bytes, deadline: float | None, first_read: Callable[[], Meta],
                 before_blocking: Callable[[], Any], read_ahead: bool) -> Meta:
        resp3 = conn.protocol in (3, "3")
        commands: list[tuple[Any, ...]] = []
        if stale is not None and stale != channel:
            commands.append(("UNSUBSCRIBE", stale))
        commands.append(("SUBSCRIBE", channel))
        if resp3:
            commands.append(("GET", channel))
        conn.send_packed_command(conn.pack_commands(commands), False)
        confirmed = False
        if read_ahead or not resp3:
            meta = first_read()
            if meta["status"] in _READY:
                return meta
            before_blocking()
            confirmed = True
        subscribed = False
        while True:
            reply = _read(conn, deadline)
            if isinstance(reply, list):  # a pub/sub push: [kind, channel, count or payload]
                if len(reply) != 3 or reply[1] != channel:
                    continue  # a confirmation or message of an earlier wait's channel
                if reply[0] == b"message":
                    payload = reply[2]
                elif reply[0] == b"subscribe":
                    subscribed = True
                    if resp3:
                        continue  # our GET's reply comes next
                    payload = self.client.get(channel)
                else:
                    continue
            elif subscribed:  # RESP3: the reply of our GET (ours: after our SUBSCRIBE's)
                payload = reply
            else:
                continue  # the reply of a GET of an earlier wait that ended before it
            meta = self._backend.meta_from_payload(task_id, payload)
            if meta["status"] in _READY:
                return meta
            if not confirmed:  # not ready after the GET: confirm, then block
                before_blocking()
                confirmed = True

    def _connect(self) -> AbstractConnection:
        """A new pub/sub connection, RESP3 when the server speaks it."""
        pool = self.client.connection_pool
        with self._lock:
            resp3 = self._resp3
        conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2 if resp3 is False else 3})
        try:
            conn.connect()
        except verr.ResponseError:  # HELLO unknown: a server older than Redis 6
            if resp3:
                raise
            conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
            conn.connect()
            resp3 = False
        with self._lock:
            self._resp3 = resp3 is not False
        return conn

    def _checkout(self) -> tuple[AbstractConnection, bytes | None]:
        """An idle pub/sub connection with the channel it is still subscribed to, or a new
        one (None)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets stay the parent's
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._connect(), None

    def _checkin(self, conn: AbstractConnection, channel: bytes, clean: bool) -> None:
        """Keep the connection, still subscribed to ``channel``, for the next wait (which
        unsubscribes it), or close it. What comes on ``channel`` meanwhile waits in the
        socket and is skipped by that wait."""
        if clean:
            with self._lock:
                if len(self._idle) < KEEP_PUBSUBS:
                    self._idle.append((conn, channel))
                    return
        conn.disconnect()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.disconnect()
        self.client.close()
        self.client.connection_pool.disconnect()
        self._scripts.close()


class _ScriptConnection:
    """``SyncSide.run_script``'s connection, kept between scripts: the result a worker
    thread writes itself (worker/results.py) is one script round trip, without valkey-py's
    pool checkout, whose health check costs three system calls, and command path (about
    12 µs of that thread's CPU per script, measured beside it on the benchmark machine).

    Not retried, except once on a connection error of a connection used before (the
    server may have closed it while idle): the script stores a result and guards a stored
    SUCCESS, so running it twice stores the same. A forked child makes its own connection.
    Thread-safe: ``_lock`` guards ``_conn``, ``_used`` and ``_pid``, and is held for a
    script's round trip (one script at a time; the ResultGate writes one at a time anyway).
    """

    def __init__(self, make: Callable[[], AbstractConnection]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._conn: AbstractConnection | None = None
        self._used = False  # the connection answered a script since it was last connected
        self._pid = os.getpid()

    def run(self, sha: str, script: str, args: list[Any]) -> Any:
        with self._lock:
            if self._conn is None or self._pid != os.getpid():
                self._conn, self._used, self._pid = self._make(), False, os.getpid()
            conn = self._conn
            for retry in (False, True):
                reused = self._used
                try:
                    reply = _evalsha(conn, sha, script, args)
                except verr.ResponseError:
                    self._used = True  # an error reply: the connection is fine
                    raise
                except BaseException as exc:
                    conn.disconnect()
                    self._used = False
                    if retry or not reused or not isinstance(exc, verr.ConnectionError):
                        raise
                    continue
                self._used = True
                return reply
        raise AssertionError("unreachable")  # pragma: no cover: the retry returns or raises

    def close(self) -> None:
        with self._lock:
            conn, self._conn, self._used = self._conn, None, False
        if conn is not None:
            conn.disconnect()


def _evalsha(conn: AbstractConnection, sha: str, script: str, args: list[Any]) -> Any:
    conn.send_packed_command(conn.pack_command("EVALSHA", sha, *args), check_health=False)
    try:
        return conn.read_response()
    except verr.NoScriptError:
        conn.send_packed_command(conn.pack_command("EVAL", script, *args), check_health=False)
        return conn.read_response()


def _read(conn: AbstractConnection, deadline: float | None) -> Any:
    """The next reply or push on ``conn``; TimeoutError at ``deadline``."""
    while True:
        slice_ = READ_SLICE if deadline is None else min(READ_SLICE, deadline - time.monotonic())
        if slice_ <= 0:
            raise TimeoutError("The operation timed out.")
        if conn.can_read(timeout=slice_):
            return conn.read_response(push_request=True)
