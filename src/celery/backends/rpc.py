"""``rpc://``: results sent back as AMQP messages to the client that sent the task, as
upstream Celery's RPC backend sends them.

Wire format (upstream Celery 5.x, so that our workers answer upstream clients and theirs
answer ours): a task message carries ``reply_to`` (the sending app's id, ``app.oid``, the
name of its reply queue) and ``correlation_id`` (the task id). The worker publishes every state it
stores for the task (STARTED, RETRY, SUCCESS, FAILURE, REVOKED...) to the default exchange
with routing key ``reply_to`` and the same ``correlation_id``; the body is the result meta
(``status``, ``result``, ``traceback``, ``children``, ``date_done``, ``task_id``, and the
extended fields under ``result_extended``) in ``result_serializer``; ``delivery_mode`` 2
when ``result_persistent`` is on, else 1. No reply is published for a task sent without
``reply_to``. Nothing is stored on the server: a state lives in the client's queue
until the client reads it, then in the client's memory (rpc_replies.py).

Like upstream: chords, saved groups and reading another process's results are not
supported; ``forget`` only drops this process's copy. Results are readable only by the
process that sent the task.

The worker side: ``prepare_meta`` (called with the task's request on an executor thread)
notes where the task's states go; ``_aset_many`` (the flusher, on the consumer's loop)
publishes them on that loop's ``rpc`` channel with publisher confirms, and forgets the
destination once a final state is confirmed. ``_destinations`` is guarded by ``_lock``;
``_declared`` (the reply queue exists) is a ``threading.Event``.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .. import states
from .._state import current_request
from ..exceptions import ConnectionLost, ImproperlyConfigured, TimeoutError
from ..messaging import serialization
from ..messaging.protocol import REPLY_TO
from ..utils.text import mask_url
from .base import Conf, ResultBackend
from .rpc_replies import Replies

__all__ = ["E_NO_CHORD_SUPPORT", "RPCBackend"]

logger = logging.getLogger(__name__)

E_NO_CHORD_SUPPORT = (
    'The "rpc" result backend does not support chords!\n\n'
    "Note that a group chained with a task is also upgraded to be a chord, as this pattern "
    "requires synchronization.\n\n"
    "Result backends that supports chords: Redis, Database, Memcached, and more."
)

#: Destinations of tasks still running kept by a worker, beyond which the oldest go.
MAX_DESTINATIONS = 100_000

#: Seconds a batch of replies may wait for the broker's confirms before the flusher is
#: told the broker is unreachable (it then retries the batch with backoff).
PUBLISH_TIMEOUT = 10.0

Meta = dict[str, Any]


class RPCBackend(ResultBackend):
    """Results as messages to the sender's reply queue; see the module docstring.

    Thread-safety: as every backend (any thread; coroutines on any loop). Replies are
    consumed on the app's portal loop; see rpc_replies.py for how they reach waiters.
    """

    def __init__(self, conf: Conf, url: str | None = None, **options: Any) -> None:
        super().__init__(conf, url, **options)
        from ..transport.amqp_connection import AMQP_SCHEMES, Connections, parse_amqp_url

        if url and url.rstrip("/").lower() != "rpc:":
            logger.warning("rpc:// takes no host, path or options (the broker's connection "
                           "is used): ignoring the rest of %r, as Celery does", url)
        broker = conf.get("broker_url")
        if not broker or not isinstance(broker, str):
            raise ImproperlyConfigured(
                f"The rpc:// result backend needs an AMQP broker URL in broker_url, not "
                f"{broker!r} (with no broker configured, the broker is sqlite://)")
        if ";" in broker:
            logger.warning("rpc:// replies use the first broker of the failover list %s",
                           mask_url(broker))
            broker = broker.split(";", 1)[0].strip()
        scheme = broker.partition("://")[0].lower()
        if scheme not in AMQP_SCHEMES:
            raise ImproperlyConfigured(
                f"The rpc:// result backend needs an AMQP broker ({', '.join(sorted(AMQP_SCHEMES))}"
                f"); broker_url is {scheme}://. Use another result backend (redis://, "
                f"db+sqlite://, file://) with this broker.")
        self.params = parse_amqp_url(
            broker, transport_options=conf.get("broker_transport_options") or {},
            connection_timeout=conf.get("broker_connection_timeout"),
            heartbeat=conf.get("broker_heartbeat"), use_ssl=conf.get("broker_use_ssl"))
        self.connections = Connections(self.params)
        persistent = conf.get("result_persistent")
        #: ``result_persistent``: replies survive a broker restart (delivery mode 2).
        self.persistent = bool(persistent) if persistent is not None else False
        self.delivery_mode = 2 if self.persistent else 1
        serializer = serialization.serializer_by_name(self.serializer)
        self._content_type = serializer.content_type
        self._content_encoding = serializer.content_encoding
        #: The app's reply queue: the ``reply_to`` of every task it sends (``app.oid``).
        self.oid = str(options.get("reply_to") or REPLY_TO)
        arguments = {"x-expires": int(self.expires * 1000)} if self.expires else {}
        self.replies = Replies(self.connections, self.oid, arguments, self.accept,
                               self.meta_from_decoded)
        self._lock = threading.Lock()
        self._destinations: OrderedDict[str, tuple[str, str]] = OrderedDict()
        #: Set once the reply queue was declared (read by senders on any thread).
        self._declared = threading.Event()

    def as_uri(self, include_password: bool = True) -> str:
        return "rpc://"

    # -- the sender ---------------------------------------------------------------------------

    @property
    def sender_ready(self) -> bool:  # type: ignore[override]
        return self._declared.is_set()

    def prepare_sender(self) -> None:
        self._call(self.aprepare_sender())

    async def aprepare_sender(self) -> None:
        """Declare the reply queue on the portal loop (from any loop), once."""
        if self._declared.is_set():
            return
        loop = self.portal.loop
        if asyncio.get_running_loop() is loop:
            await self.replies.declare()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                self.replies.declare(), loop))
        self._declared.set()

    # -- the worker: publishing states --------------------------------------------------------

    def prepare_meta(self, task_id: str, state: str, result: Any = None,
                     traceback: str | None = None, request: Any = None) -> dict[str, Any]:
        """The meta, as every backend makes it; notes where the task's states go."""
        meta = super().prepare_meta(task_id, state, result, traceback, request)
        if request is None:  # as upstream: the running task's request
            request = current_request.get()
        reply_to = getattr(request, "reply_to", None)
        if reply_to and not (isinstance(reply_to, str) and len(reply_to.encode()) <= 255):
            # An AMQP routing key is a short string: a message that says otherwise gets no
            # reply (rather than a publish that fails, holding back every result after it).
            logger.error("Task %s: reply_to %.80r is not a queue name; its %s state is not "
                         "sent", task_id, reply_to, state)
            reply_to = None
        if reply_to:
            # The request may be another task's (a chain storing a later step's failure):
            # its correlation id is then not this task's.
            own = getattr(request, "id", None) in (task_id, None)
            correlation_id = (getattr(request, "correlation_id", None) if own else None) or task_id
            with self._lock:
                self._destinations[task_id] = (str(reply_to), str(correlation_id))
                self._destinations.move_to_end(task_id)
                while len(self._destinations) > MAX_DESTINATIONS:
                    self._destinations.popitem(last=False)
        return meta

    async def _aset_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Publish each state to its task's reply queue, confirmed by the broker."""
        sends = []
        with self._lock:
            for task_id, payload, state in items:
                destination = self._destinations.get(task_id)
                if destination is None:
                    logger.debug("No reply_to for task %s: its %s state is not sent", task_id,
                                 state)
                    continue
                sends.append((task_id, payload, state, destination))
        if not sends:
            return
        from aio_pika import DeliveryMode
        from aio_pika import Message as AMQPMessage

        from ..transport.amqp_connection import driver_errors

        mode = DeliveryMode.PERSISTENT if self.persistent else DeliveryMode.NOT_PERSISTENT
        try:
            exchange = (await self.connections.channel("rpc")).default_exchange
            # One channel, whose publishes go out in order: a task's states keep theirs.
            await asyncio.gather(*(
                exchange.publish(
                    AMQPMessage(payload, content_type=self._content_type,
                                content_encoding=self._content_encoding,
                                correlation_id=correlation_id, delivery_mode=mode, priority=0),
                    routing_key=reply_to, mandatory=False, timeout=PUBLISH_TIMEOUT)
                for _, payload, _, (reply_to, correlation_id) in sends))
        except asyncio.CancelledError:
            raise
        except ConnectionLost:
            raise
        except driver_errors() as exc:
            raise ConnectionLost(f"Cannot send results to {self.params.safe_url}: {exc}") from exc
        with self._lock:
            for task_id, _, state, _ in sends:
                if state in states.READY_STATES:
                    self._destinations.pop(task_id, None)

    # -- the client: reading states -----------------------------------------------------------

    async def _start(self) -> None:
        """Consume the reply queue on the portal loop (from any loop), once."""
        if self.replies.started:
            return
        loop = self.portal.loop
        if asyncio.get_running_loop() is loop:
            await self.replies.start()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.replies.start(), loop))
        self._declared.set()

    def _pending(self, task_id: str) -> Meta:
        return self.meta_from_payload(task_id, None)

    async def aget_task_meta(self, task_id: str) -> Meta:
        """The latest state this process received for the task (PENDING if none yet)."""
        await self._start()
        return self.replies.latest(task_id) or self._pending(task_id)

    def get_task_meta(self, task_id: str) -> Meta:
        if not self.replies.started:
            self._call(self._start())
        return self.replies.latest(task_id) or self._pending(task_id)

    async def aget_many_meta(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        await self._start()
        return {tid: self.replies.latest(tid) or self._pending(tid) for tid in task_ids}

    async def aget_raw(self, task_id: str) -> bytes | None:
        raise NotImplementedError("rpc:// stores no payloads: read states with "
                                  "aget_task_meta (results reach only their sender)")

    async def await_ready(self, task_id: str, timeout: float | None) -> Meta:
        """The task's final meta, once its reply arrives (any loop)."""
        await self._start()
        meta, future = self.replies.waiter(task_id)
        if future is None:
            assert meta is not None
            return meta
        try:
            if timeout is not None and timeout <= 0:
                raise builtins.TimeoutError
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(future)
        except builtins.TimeoutError:
            raise TimeoutError("The operation timed out.") from None
        finally:
            self.replies.unwait(task_id, future)

    def wait_for(self, task_id: str, timeout: float | None = None) -> Meta:
        """``await_ready`` for sync callers: blocks the calling thread on the reply's future
        (any thread but the portal's)."""
        self.confirm_published()
        if not self.replies.started:
            self._call(self._start())
        elif _running_loop() is self.portal.loop:  # the reply could never be taken in
            raise RuntimeError("A sync get() on the portal's loop would deadlock; await instead")
        meta, future = self.replies.waiter(task_id)
        if future is None:
            assert meta is not None
            return meta
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError("The operation timed out.") from None
        finally:
            self.replies.unwait(task_id, future)

    async def adelete(self, task_id: str) -> None:
        """Forget this process's copy of the task's state (nothing is stored elsewhere)."""
        self.replies.forget(task_id)

    def forget(self, task_id: str) -> None:
        self.replies.forget(task_id)

    # -- what upstream's RPC backend refuses --------------------------------------------------

    def ensure_chords_allowed(self) -> None:
        raise NotImplementedError(E_NO_CHORD_SUPPORT)

    async def asave_group(self, group_id: str, result: Any) -> None:
        raise NotImplementedError("save_group is not supported by this backend.")

    async def aget_group_meta(self, group_id: str) -> dict[str, Any] | None:
        raise NotImplementedError("restore_group is not supported by this backend.")

    async def adelete_group(self, group_id: str) -> None:
        raise NotImplementedError("delete_group is not supported by this backend.")

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        raise NotImplementedError("save_group is not supported by this backend.")

    async def _aget_group(self, group_id: str) -> bytes | None:
        raise NotImplementedError("restore_group is not supported by this backend.")

    async def _adelete_group(self, group_id: str) -> None:
        raise NotImplementedError("delete_group is not supported by this backend.")

    # -- lifecycle ----------------------------------------------------------------------------

    async def ping(self) -> None:
        await self.connections.connection()

    async def aclose(self) -> None:
        await self.connections.aclose()

    def close(self) -> None:
        self.connections.close()
        super().close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
