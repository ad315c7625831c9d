"""The Redis result backend for sync callers: reads and waits on the caller's own thread.

``AsyncResult.get()`` from plain code used to hop to the app's portal loop and back for
every read; here the calling thread talks to Redis itself over blocking connections, so a
result that is already there costs one round trip and no thread switch.
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

if TYPE_CHECKING:
    from valkey.client import PubSub

    from .redis import RedisBackend

__all__ = ["SyncSide"]

Meta = dict[str, Any]

#: Longest single blocking read while waiting (seconds); the wait loops until its deadline.
READ_SLICE = 1.0

#: Idle pub/sub connections kept for later waits.
KEEP_PUBSUBS = 4


class SyncSide:
    """Blocking valkey-py clients for sync callers. Thread-safe: the connection pool is
    (valkey-py's pool locks itself), and ``_lock`` guards the list of idle pub/sub
    connections; a pub/sub connection is used by one waiting thread at a time.
    """

    def __init__(self, backend: RedisBackend, conn_kwargs: dict[str, Any]) -> None:
        self._backend = backend
        kwargs = dict(conn_kwargs)
        # parse_url gave valkey.asyncio's connection classes; take the blocking twins.
        kwargs["connection_class"] = getattr(valkey.connection, kwargs["connection_class"].__name__)
        kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.02), 2))
        kwargs.setdefault("retry_on_error", [verr.ConnectionError, verr.TimeoutError])
        self.client = valkey.Valkey(connection_pool=valkey.ConnectionPool(**kwargs))
        self._lock = threading.Lock()
        self._idle: list[tuple[PubSub, bytes]] = []  # with the channel still subscribed
        self._pid = os.getpid()  # idle pub/sub sockets must not be shared with a forked child

    def read(self, task_ids: list[str]) -> list[bytes | None]:
        """The stored payloads of ``task_ids``, in one round trip."""
        keys = [self._backend.get_key_for_task(t) for t in task_ids]
        if len(keys) == 1:
            return [cast("bytes | None", self.client.get(keys[0]))]
        return cast("list[bytes | None]", self.client.mget(keys))

    def wait(self, task_id: str, timeout: float | None, first_read: Callable[[], Meta],
             before_blocking: Callable[[], Any]) -> Meta:
        """Block until the task is ready.

        SUBSCRIBE to its channel is written first, and ``first_read()`` (the read-ahead
        MGET) runs while Redis answers it: a result already there costs one round trip.
        Otherwise ``before_blocking()`` runs, then once the subscription is confirmed the
        key is read again (the first read may have come before the subscription, and the
        result between the two), then the wait is for the PUBLISH. The channel stays
        subscribed after the wait: a later wait on the same connection unsubscribes it as it
        starts, so that the caller gets its result one write sooner.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
            ConnectionError/TimeoutError/OSError of the driver: the caller falls back.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self._backend.get_key_for_task(task_id).encode()
        pubsub, stale = self._checkout()
        clean = False
        try:
            if stale is not None and stale != channel:
                pubsub.unsubscribe(stale)  # its reply is skipped below
            pubsub.subscribe(channel)
            meta = first_read()
            if meta["status"] in states.READY_STATES:
                clean = True
                return meta
            before_blocking()
            while True:
                slice_ = READ_SLICE if deadline is None else min(READ_SLICE, deadline - time.monotonic())
                if slice_ <= 0:
                    raise TimeoutError("The operation timed out.")
                message = pubsub.get_message(timeout=slice_)
                if message is None or message["channel"] != channel:
                    continue  # a quiet slice, or a stale reply of an earlier wait
                if message["type"] == "subscribe":
                    payload = cast("bytes | None", self.client.get(channel))
                elif message["type"] == "message":
                    payload = message["data"]
                else:
                    continue
                meta = self._backend.meta_from_payload(task_id, payload)
                if meta["status"] in states.READY_STATES:
                    clean = True
                    return meta
        finally:
            self._checkin(pubsub, channel, clean)

    def _checkout(self) -> tuple[PubSub, bytes | None]:
        """An idle pub/sub connection with the channel it is still subscribed to, or a new
        one (None)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets stay the parent's
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return self.client.pubsub(), None

    def _checkin(self, pubsub: PubSub, channel: bytes, clean: bool) -> None:
        """Keep the connection, still subscribed to ``channel``, for the next wait (which
        unsubscribes it), or close it. A message that comes on ``channel`` meanwhile waits
        in the socket and is skipped by that wait."""
        if clean:
            with self._lock:
                if len(self._idle) < KEEP_PUBSUBS:
                    self._idle.append((pubsub, channel))
                    return
        pubsub.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for pubsub, _ in idle:
            pubsub.close()
        self.client.close()
        self.client.connection_pool.disconnect()
