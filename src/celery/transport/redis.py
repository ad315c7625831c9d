"""Redis/Valkey transport, laid out exactly as kombu's Redis transport lays out its keys.

Upstream Celery 5.x workers consume what we publish and we consume what they publish:

* A queue is a list of kombu JSON envelopes (``{"body": base64, "content-encoding",
  "content-type", "headers", "properties"}``, made by one ``json.dumps`` with default
  settings). Producers LPUSH, consumers pop from the tail, so each list is FIFO.
* Priorities map to sub-queues: priority ``p`` (clamped to 0..9, 0 when missing) goes to the
  step ``steps[bisect(steps, p) - 1]`` of ``priority_steps`` (default ``[0, 3, 6, 9]``); step 0
  is the plain queue name, step ``s`` is ``queue + sep + str(s)`` with ``sep = "\\x06\\x16"``.
  Consumers read the steps in ascending order, so on Redis **0 is the highest priority**.
* Reserved messages live in the hash ``unacked`` (field delivery_tag, value JSON
  ``[envelope, exchange, routing_key]``) and the zset ``unacked_index`` (score: ``time.time()``
  at reservation). ``restore_visible`` moves entries older than ``visibility_timeout`` back to
  the tail of their queue (delivered next, original order kept) under the ``unacked_mutex``
  lock, marking ``redelivered`` in headers and ``delivery_info`` as kombu does.
* Our own addition: the lists ``celery-asyncio.reserved.<consumer>:<queue key>`` and their
  registry, the sorted set ``celery-asyncio.reserved`` (redis_reserved.py): what a blocking
  wait took and the fetch script has not recorded in ``unacked`` yet.
* Our own addition: the string ``celery-asyncio.fetched.<consumer>``, the consumer's fetch
  journal (redis_scripts.FETCH): the tags its last fetch reserved, handed over again to the
  retry of a fetch whose reply was lost.
* ``declare`` adds ``routing_key + sep + "" + sep + queue`` to ``_kombu.binding.<queue>`` and
  ``_kombu.binding_permanent.<queue>`` (Celery's default exchange is named after its queue).
* ``global_keyprefix`` prefixes every key.
* Remote control (``Mailbox``, in ``redis_mailbox.py``): a fanout exchange is the PUB/SUB channel
  ``fanout_prefix + exchange`` (kombu's default prefix is ``/{db}.``, e.g.
  ``/0.celery.pidbox``), subscribed with PSUBSCRIBE as kombu does; a direct exchange is the
  binding set ``_kombu.binding.<exchange>`` (members ``routing_key + sep + "" + sep + queue``)
  and ``direct_publish`` LPUSHes onto each bound queue, as kombu's ``_lookup``/``_put`` do.
* Our own addition: the sorted set ``celery-asyncio.delayed`` holds messages whose far ETA a
  worker deferred (``defer``; score: due time) until ``promote_due`` puts them back.

Differences from kombu, on purpose: ``publish`` always routes to the queue named by the routing
key (Celery publishes with the anonymous exchange ``""``); ``fetch`` reads queues in the order
given unless ``queue_order_strategy`` is ``"round_robin"`` or ``"sorted"``; ``requeue`` keeps
the original order of the batch.

Malformed elements (not JSON, no ``body`` or ``delivery_tag``, bad base64) never crash
``fetch`` and never take good messages down with them: each is removed from ``unacked``,
pushed unchanged onto the list ``celery-asyncio.dead-letter`` (kombu has no dead-letter on
Redis, and dropping it silently would lose data) and logged with its queue and first bytes.

Delivery guarantees: publishing is at-least-once (a publish that failed with a connection
error is retried, and the server may have executed it before the connection broke). Sync
``publish`` waits for Redis's reply, unless ``publish_pipeline`` is true: then it returns
once the command is written, and the reply is read later (redis_publish.py says what that
guarantees). Nothing a fetch takes is ever only in the
worker's memory: the fetch script pops and records in ``unacked`` in one step, and a fetch
that waits for an empty queue does so with ``BLMOVE`` into a reserved list of this
consumer's own (redis_reserved.py: a worker killed before the record leaves the message
there for ``restore_visible``), where kombu's ``BRPOP`` would lose it. With
``fetch(early=...)`` the message a wait took runs before the script records it; one acked
on the spot is never recorded in ``unacked`` (an LREM takes it out of the reserved list).
Restoring the reservations of dead consumers: redis_restore.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from bisect import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import valkey
import valkey.asyncio as avalkey
from valkey.exceptions import NoScriptError

from ..exceptions import ConnectionLost, DecodeError, ImproperlyConfigured
from ..messaging.protocol import Message
from . import envelope as envelope_codec
from . import redis_aio as _aio
from . import redis_scripts as _scripts
from .base import (
    CAP_BROADCAST,
    CAP_EARLY,
    CAP_LEASE,
    CAP_PRIORITY,
    CAP_VISIBILITY_TIMEOUT,
    EARLY_ALONE,
    Delivery,
    EarlyHandler,
)
from .redis_keys import Layout as _Layout
from .redis_keys import parse_url, priority_steps
from .redis_lease import RedisLease
from .redis_mailbox import RedisMailbox
from .redis_publish import DRIVER_ERRORS as _DRIVER_ERRORS
from .redis_publish import RETRYABLE as _RETRYABLE
from .redis_publish import SyncPublisher
from .redis_publish import backoff as _backoff
from .redis_reserved import REGISTRY, Waiters
from .redis_restore import RedisRestore

__all__ = ["DEAD_LETTER_KEY", "RedisTransport", "parse_url"]

logger = logging.getLogger(__name__)

#: Where malformed queue elements go (a list; the raw bytes are pushed unchanged).
DEAD_LETTER_KEY = "celery-asyncio.dead-letter"
#: Where messages with a far ETA wait (a sorted set scored by due time; see ``defer``).
DELAYED_KEY = "celery-asyncio.delayed"
#: Delays between attempts at recording a message already handed over early (``_record_handed``):
#: about half a minute in all; None: give up.
RECORD_RETRIES: tuple[float | None, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, None)

#: Connection options taken from transport_options as they are.
_CONNECTION_OPTIONS = (
    *("socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options"),
    *("retry_on_timeout", "health_check_interval", "client_name"),
)


def _bad_element(queue: str, item: bytes, why: str) -> None:
    logger.warning("Malformed message in Redis queue %r (%s) moved to %r: %r",
                   queue, why, DEAD_LETTER_KEY, bytes(item[:120]))


#: kombu's envelope helpers, under the names this module and its tests use.
_delivery = envelope_codec.decode
_redelivered = envelope_codec.mark_redelivered


def _well_formed(item: bytes, queue: str) -> Delivery | None:
    """``item`` as a Delivery if the fetch script would accept it too (a string
    ``properties.delivery_tag`` and ``body``), else None."""
    try:
        delivery = _delivery("", item, queue)
    except DecodeError:
        return None
    tag = delivery.message.properties.get("delivery_tag")
    if not isinstance(tag, str):
        return None
    delivery.delivery_tag = tag
    return delivery


class RedisTransport(RedisRestore, RedisMailbox):
    """Transport for Redis and Valkey (``redis://``, ``rediss://``, ``valkey://``, ``valkeys://``).

    Thread-safety: ``publish`` may be called from any thread (one shared, thread-safe sync
    connection pool); coroutines may be awaited on any event loop (one async client and pool
    per loop). See the module docstring for the key layout.
    """

    capabilities = frozenset({CAP_PRIORITY, CAP_VISIBILITY_TIMEOUT, CAP_BROADCAST, CAP_EARLY,
                              CAP_LEASE})

    def __init__(
        self,
        url: str,
        *,
        transport_options: dict | None = None,
        connection_timeout: float | None = None,
        max_connections: int | None = None,
        **_ignored: Any,
    ) -> None:
        opts = dict(transport_options or {})
        self.url = url
        kwargs, tls, self._safe_url = parse_url(url)
        for name in _CONNECTION_OPTIONS:
            if opts.get(name) is not None:
                kwargs[name] = opts[name]
        kwargs.update((k, v) for k, v in opts.items() if k.startswith("ssl_"))
        kwargs.setdefault("socket_connect_timeout", connection_timeout or 5.0)
        self._tls = tls
        self._kwargs = kwargs
        self._max_connections = opts.get("max_connections", max_connections)
        self._socket_timeout = kwargs.get("socket_timeout")
        self.visibility_timeout = float(opts.get("visibility_timeout", 3600))
        self.max_retries = int(opts.get("max_retries", 4))
        self.sep = str(opts.get("sep", "\x06\x16"))
        self.priority_steps = priority_steps(opts.get("priority_steps", (0, 3, 6, 9)))
        self.queue_order_strategy = str(opts.get("queue_order_strategy", "priority"))
        if self.queue_order_strategy not in ("priority", "round_robin", "sorted"):
            raise ImproperlyConfigured(
                f"queue_order_strategy must be priority, round_robin or sorted, "
                f"got {self.queue_order_strategy!r}"
            )
        prefix = self.keyprefix = str(opts.get("global_keyprefix", ""))
        self.unacked_key = prefix + str(opts.get("unacked_key", "unacked"))
        #: Our own key (kombu has none): messages deferred until their ETA (``defer``).
        self.delayed_key = prefix + DELAYED_KEY
        self.unacked_index_key = prefix + str(opts.get("unacked_index_key", "unacked_index"))
        self.unacked_mutex_key = prefix + str(opts.get("unacked_mutex_key", "unacked_mutex"))
        self.unacked_mutex_expire = float(opts.get("unacked_mutex_expire", 300))
        self.unacked_restore_limit = opts.get("unacked_restore_limit")
        self.dead_letter_key = prefix + DEAD_LETTER_KEY
        fanout_prefix = opts.get("fanout_prefix", True)  # kombu's option and default
        if isinstance(fanout_prefix, str):
            self.fanout_prefix = prefix + fanout_prefix
        else:
            self.fanout_prefix = prefix + (f"/{kwargs['db']}." if fanout_prefix else "")
        # priority 0..9 -> index into priority_steps, as kombu's bisect does.
        self._step_of = tuple(bisect(self.priority_steps, p) - 1 for p in range(10))
        # Caches below are filled from any thread; a plain dict is safe there (per-object
        # locking on free-threaded builds) and a lost race only computes a value twice.
        self._subkeys: dict[str, tuple[str, ...]] = {}
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        # _clients_lock guards _async_clients (event loop -> its client) and _rr_turn: both
        # read and replaced by callers on any thread and any loop.
        self._clients_lock = threading.Lock()
        self._async_clients: dict[asyncio.AbstractEventLoop, avalkey.Valkey] = {}
        #: Each loop's blocking waits (redis_reserved.Waiters), beside its client; also
        #: under _clients_lock.
        self._waiters: dict[asyncio.AbstractEventLoop, Waiters] = {}
        self.reserved_registry_key = prefix + REGISTRY
        self._publisher = SyncPublisher(lambda: self._pool(valkey), self._safe_url,
                                        self.max_retries, bool(opts.get("publish_pipeline", False)))
        self._rr_turn = 0
        #: Coalesced publishes (``apublish``): each loop's pending batch, under
        #: _clients_lock, as is _sending, the flush tasks in flight (strong references).
        self._coalesce = bool(opts.get("publish_coalesce", True))
        self._batches: dict[asyncio.AbstractEventLoop, list[tuple[str, str, asyncio.Future[None]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._drained: set[tuple[str, ...]] = set()  # queue keys the last fetch emptied
        #: Deliveries handed over early whose record in ``unacked`` is in flight: tag ->
        #: future set (on the fetching loop) once it is done. Under _clients_lock.
        self._recording: dict[str, asyncio.Future[None]] = {}

    def __repr__(self) -> str:
        return f"<RedisTransport {self._safe_url}>"

    # -- clients -------------------------------------------------------------------------

    def _pool(self, lib: Any) -> Any:
        """A new connection pool of ``lib`` (``valkey`` or ``valkey.asyncio``)."""
        kwargs: dict[str, Any] = dict(self._kwargs)
        kwargs["connection_class"] = lib.SSLConnection if self._tls else lib.Connection
        pools: Any = lib
        if lib is avalkey:  # without valkey-py's loop turns per command (see redis_aio)
            kwargs["connection_class"] = _aio.direct_write(kwargs["connection_class"])
            pools = _aio
        if not self._max_connections:
            return pools.ConnectionPool(**kwargs)
        # Blocking: a caller waits for a free connection instead of failing at the limit.
        return pools.BlockingConnectionPool(max_connections=self._max_connections, **kwargs)

    def _client(self) -> avalkey.Valkey:
        """The running loop's async client, made on first use. Call from a running loop."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._async_clients.get(loop)
            if client is None:
                for old in [lp for lp in self._async_clients if lp.is_closed()]:
                    del self._async_clients[old]
                    self._waiters.pop(old, None)
                client = avalkey.Valkey(connection_pool=self._pool(avalkey))
                self._async_clients[loop] = client
            return client

    def _waiters_here(self) -> Waiters:
        """The running loop's blocking waits (redis_reserved.py), made on first use."""
        loop = asyncio.get_running_loop()
        client = self._client()
        with self._clients_lock:
            waiters = self._waiters.get(loop)
            if waiters is None:
                beat = min(self.visibility_timeout / 4, 1.0)
                waiters = self._waiters[loop] = Waiters(client.connection_pool, self.keyprefix,
                                                        beat, self._reclaim)
            return waiters

    async def _reclaim(self, list_key: str, key: str) -> int:
        """Give everything in this consumer's reserved list back to its queue (RECLAIM)."""
        keys = (list_key, key)
        return int(await self._run("reclaim", lambda c: self._eval(c, _scripts.RECLAIM, keys, ())))

    def _lost(self, what: str, exc: BaseException) -> ConnectionLost:
        return ConnectionLost(f"Redis {what} failed on {self._safe_url}: {exc}")

    async def _eval(
        self, client: avalkey.Valkey, script: _scripts.Script, keys: Sequence, args: Sequence
    ) -> Any:
        try:
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.execute_command("SCRIPT LOAD", script.source)
            return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def leader_lease(self, name: str) -> RedisLease:
        """Beat's leader lease ``name`` on this server (redis_lease.py)."""
        return RedisLease(self, name)

    # -- layout --------------------------------------------------------------------------

    def _queue_keys(self, queue: str) -> tuple[str, ...]:
        """The list key of each priority step of ``queue`` (prefixed). Any thread."""
        keys = self._subkeys.get(queue)
        if keys is None:
            name = self.keyprefix + queue
            keys = tuple(f"{name}{self.sep}{s}" if s else name for s in self.priority_steps)
            self._subkeys[queue] = keys
        return keys

    def _key_for(self, queue: str, priority: Any) -> str:
        """kombu's ``_q_for_pri``: the sub-queue a message of ``priority`` goes to."""
        return self._queue_keys(queue)[self._step_of[envelope_codec.clamp_priority(priority)]]

    def _layout(self, queues: tuple[str, ...]) -> _Layout:
        layout = self._layouts.get(queues)
        if layout is None:
            pairs = [
                (self._queue_keys(q)[i], q) for i in range(len(self.priority_steps)) for q in queues
            ]
            keys = tuple(k for k, _ in pairs)
            fixed = (self.unacked_key, self.unacked_index_key, self.dead_letter_key,
                     self.reserved_registry_key)
            by_key = {k.encode(): n for n, k in enumerate(keys, 1)}
            layout = _Layout(fixed + keys, keys, tuple(q for _, q in pairs), by_key)
            self._layouts[queues] = layout
        return layout

    def _ordered(self, queues: Sequence[str]) -> tuple[str, ...]:
        if self.queue_order_strategy == "sorted":
            return tuple(sorted(queues))
        if self.queue_order_strategy == "round_robin" and len(queues) > 1:
            with self._clients_lock:
                self._rr_turn = turn = (self._rr_turn + 1) % len(queues)
            return tuple(queues[turn:]) + tuple(queues[:turn])
        return tuple(queues)

    def envelope_of(self, message: Message, tag: str | None = None) -> tuple[str, str]:
        """``(list key, kombu JSON envelope)`` of a message (transport/envelope.py)."""
        _, payload, priority = envelope_codec.encode(message, tag)
        return self._key_for(message.routing_key, priority), payload

    def publish_encoded(self, key: str, payload: str, task_id: str | None) -> None:
        """``publish`` of an envelope already made for ``key`` (app/template.py)."""
        self._publisher.publish(key, payload, task_id)

    # -- publishing ----------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        """LPUSH one message and wait for Redis's reply (pipelined, without waiting, when
        ``publish_pipeline`` is true: see redis_publish.py); connection errors are retried
        with backoff. Any thread."""
        self.publish_encoded(*self.envelope_of(message), message.headers.get("id"))

    def confirm_published(self) -> None:
        """Wait for Redis's replies to this process's publishes; raise for a refused one."""
        self._publisher.confirm()

    def confirm_own_published(self) -> None:
        """``confirm_published`` for the calling context's messages (worker/tracer.py)."""
        self._publisher.confirm_own()

    async def _run(
        self, what: str, op: Callable[[avalkey.Valkey], Any], retries: int = 1, first: float = 0
    ) -> Any:
        """Await ``op(client)``, converting driver errors; connection errors are retried.

        The retry is what replaces connections the server dropped: a dead pooled connection
        is only noticed when used, and is then discarded. Call from a running loop.
        """
        for delay in _backoff(retries, first):
            try:
                return await op(self._client())
            except _DRIVER_ERRORS as exc:
                if delay is None or not isinstance(exc, _RETRYABLE):
                    raise self._lost(what, exc) from exc
                logger.debug("%s on %s failed (%s), retrying in %.1fs", what, self, exc, delay)
            await asyncio.sleep(delay)

    async def _pipeline(
        self, what: str, commands: Iterable[tuple], transaction: bool = False, **retry: Any
    ) -> list:
        """Send raw commands such as ``("LLEN", key)`` in one round trip; their replies."""
        commands = list(commands)

        async def send(client: avalkey.Valkey) -> list:
            pipe = client.pipeline(transaction=transaction)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

        return await self._run(what, send, **retry)

    async def apublish(self, message: Message) -> None:
        """LPUSH one message from the running loop (retried like ``publish``).

        Publishes awaited on one loop in the same iteration are coalesced: the first one
        schedules a flush for the loop's next iteration, and the flush sends them all in one
        pipeline, consecutive messages for one queue in one multi-value LPUSH (which keeps
        their order). Each caller still awaits its own message's outcome. Transport option
        ``publish_coalesce=False`` sends one LPUSH per message instead.
        """
        key, payload = self.envelope_of(message)
        if not self._coalesce:
            await self._run("publish", lambda c: c.lpush(key, payload), self.max_retries, 0.1)
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with self._clients_lock:
            batch = self._batches.get(loop)
            if batch is None:
                batch = self._batches[loop] = []
                loop.call_soon(self._flush_batch, loop)
            batch.append((key, payload, done))
        await done

    def _flush_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._clients_lock:
            batch = self._batches.pop(loop, None)
        if batch:
            task = loop.create_task(self._send_batch(batch))
            with self._clients_lock:
                self._sending.add(task)  # a strong reference until it is done
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        with self._clients_lock:
            self._sending.discard(task)

    async def _send_batch(self, batch: list[tuple[str, str, asyncio.Future[None]]]) -> None:
        pushes: list[list[str]] = []
        for key, payload, _ in batch:
            if pushes and pushes[-1][1] == key:
                pushes[-1].append(payload)
            else:
                pushes.append(["LPUSH", key, payload])
        try:
            await self._pipeline("publish", [tuple(p) for p in pushes], retries=self.max_retries,
                                 first=0.1)
        except BaseException as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for _, _, done in batch:
            if not done.done():
                done.set_result(None)

    async def apublish_many(self, messages: Sequence[Message]) -> None:
        """LPUSH several messages in one pipeline round trip, from the running loop."""
        if messages:
            pushes = [("LPUSH", *self.envelope_of(m)) for m in messages]
            await self._pipeline("publish", pushes, retries=self.max_retries, first=0.1)

    def _binding_table(self, exchange: str) -> str:
        """kombu's binding set of ``exchange``: members ``routing_key + sep + pattern + sep +
        queue``."""
        return f"{self.keyprefix}_kombu.binding.{exchange}"

    def _bound(self, members: Iterable[bytes | str], routing_key: str) -> list[str]:
        """The queues that binding-set ``members`` bind with ``routing_key`` (a direct
        exchange's lookup, as kombu's), in member order."""
        queues = []
        for member in members:
            parts = (member.decode(errors="replace") if isinstance(member, bytes) else member).split(self.sep)
            if len(parts) == 3 and parts[0] == routing_key:
                queues.append(parts[2])
        return queues

    async def declare(self, queues: Iterable[str]) -> None:
        """Add kombu's bindings for each queue (exchange and routing key named after it)."""
        binding = self.keyprefix + "_kombu.binding"
        await self._pipeline("declare", [
            (command, f"{binding}{kind}.{queue}", self.sep.join((queue, "", queue)))
            for queue in queues for command, kind in (("SADD", ""), ("SADD", "_permanent"))
        ])  # fmt: skip

    # -- consuming -----------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float,
                    early: EarlyHandler | None = None) -> list[Delivery]:
        """Reserve up to ``max_count`` messages; block up to ``timeout`` s. Running loop.

        With ``early`` (CAP_EARLY), a message the blocking wait took is handed to it before
        the script records it in ``unacked`` (see ``_moved``) and is not in the returned list.
        """
        if not queues or max_count <= 0:
            return []
        layout = self._layout(self._ordered(queues))
        waiters = self._waiters_here()
        moved = waiters.taken(layout)  # waits that took a message while no fetch waited
        deliveries: list[Delivery] = []
        if moved:  # (a backlog, likely: reserve it as a batch)
            deliveries = await self._reserve_moved(layout, max_count, moved)
            full = True
        else:
            # After a fetch that drained the queues, go straight to the blocking wait: it
            # returns at once if anything came meanwhile, and a script round trip that would
            # find nothing is saved (in a lightly loaded worker, one of the few per task).
            with self._clients_lock:
                drained = layout.queue_keys in self._drained and timeout > 0
            for _ in range(0 if drained else 3):  # again if a round found only malformed ones
                deliveries, dead = await self._reserve(layout, max_count)
                if deliveries or not dead:
                    break
            full = len(deliveries) >= max_count  # False: the queues are empty now
            if not deliveries and timeout > 0:
                moved = await self._wait(waiters, layout, timeout)
                if moved:
                    deliveries, full = await self._moved(layout, max_count, moved, early)
        with self._clients_lock:
            if full:
                self._drained.discard(layout.queue_keys)
            else:
                self._drained.add(layout.queue_keys)
        return deliveries

    async def _wait(self, waiters: Waiters, layout: _Layout,
                    timeout: float) -> list[tuple[int, bytes]]:
        """Block until a wait moves a message into this consumer's reserved lists (up to
        ``timeout``, and never longer than half the visibility timeout, so that the
        heartbeat sent before it stays fresh); ``(key number, message)`` of each moved."""
        block = min(self._block_for(timeout), max(self.visibility_timeout / 2, 0.05))
        if waiters.lock.locked():  # (wait_for costs as much as the rest: not when free)
            try:
                await asyncio.wait_for(waiters.lock.acquire(), timeout)
            except TimeoutError:  # another fetch on this loop waits: it takes what comes
                return []
        else:
            await waiters.lock.acquire()
        try:
            return await waiters.wait(layout, block)
        finally:
            waiters.lock.release()

    async def _moved(self, layout: _Layout, max_count: int, moved: list[tuple[int, bytes]],
                     early: EarlyHandler | None) -> tuple[list[Delivery], bool]:
        """Reserve what the blocking waits moved (usually one message) in ``unacked``, with
        up to ``max_count`` in all; the deliveries to return, and whether more may wait
        (``fetch``'s ``full``).

        With ``early``, the first message, if well-formed, is handed over first: the task
        starts one round trip sooner. If ``early`` acked it on the spot (an idle worker, a
        task that acks early), it is never recorded in ``unacked``: an LREM takes it out of
        its reserved list (an early ack forgets it anyway). Then:

        * a backlog (the wait's queue key held more right after, as an LLEN written with the
          wait says, or other waits moved a message too) is reserved now, as a batch;
        * else, for a consumer with no other task (``EARLY_ALONE``), the next fetch goes
          straight back to the blocking wait (a lone task costs that command, the LREM and
          LLEN written with the next one, and the result write);
        * for a busy consumer, whose next messages are likely to come while it works, the
          next fetch runs the script first, to reserve them as a batch instead of one by one.

        If the first was not acked, it is recorded with the batch (moved from its list into
        ``unacked`` by the script), and until then ``_settle_after_record`` holds back
        settling it, so that no ack or requeue overtakes its record.
        """
        number, item = moved[0]
        queue = layout.names[number - 1]
        delivery = _well_formed(item, queue) if early is not None else None
        if delivery is None or early is None:
            deliveries = await self._reserve_moved(layout, max_count, moved)
            return deliveries, len(deliveries) >= max_count or len(moved) > 1
        waiters = self._waiters_here()
        try:
            acked = early(delivery)
            if acked:
                waiters.forget(number, layout, item)
                if len(moved) == 1 and not waiters.backlog:
                    return [], acked != EARLY_ALONE
                return await self._reserve_moved(layout, max_count - 1, moved[1:]), True
        except BaseException:  # a bug in the handler: keep the messages reserved, not lost
            await self._reserve_moved(layout, len(moved), moved)
            raise
        tag = delivery.delivery_tag
        recorded = asyncio.get_running_loop().create_future()
        with self._clients_lock:
            self._recording[tag] = recorded
        try:
            deliveries = await self._record_handed(layout, max_count, moved, tag, queue)
        finally:
            with self._clients_lock:
                del self._recording[tag]
            if not recorded.done():
                recorded.set_result(None)
        full = len(deliveries) >= max_count or len(moved) > 1
        # The script records the moved item first, after what it hands over of a run whose
        # reply was lost (which may be the moved item's own record).
        at = next((i for i, d in enumerate(deliveries) if d.delivery_tag == tag), None)
        if at is not None:
            del deliveries[at]
        else:
            logger.error("Task message %s from queue %r runs, but Redis dead-lettered it as "
                         "malformed, or another worker restored it meanwhile", tag, queue)
        return deliveries, full

    async def _reserve_moved(self, layout: _Layout, count: int,
                             moved: list[tuple[int, bytes]]) -> list[Delivery]:
        """``_reserve`` with messages blocking waits moved; if it fails, they stay the
        waits' (in their lists) for the next fetch, which records them then."""
        try:
            return (await self._reserve(layout, count, moved))[0]
        except ConnectionLost:
            self._waiters_here().untake(layout, moved)
            raise

    async def _record_handed(self, layout: _Layout, count: int, moved: list[tuple[int, bytes]],
                             tag: str, queue: str) -> list[Delivery]:
        """``_reserve`` when the first moved message already runs (handed over early): it
        must not be handed over again, so its record is retried here, with backoff, for
        about half a minute (the broker is away meanwhile: nothing else can be fetched). A
        retry after a reply that was lost finds it recorded already (no longer listed)."""
        for delay in RECORD_RETRIES:
            try:
                return (await self._reserve(layout, count, moved))[0]
            except ConnectionLost as exc:
                if delay is None:
                    logger.error("Task message %s from queue %r runs, but could not be "
                                 "recorded in unacked (%s): its reserved list goes back to its "
                                 "queue before the next wait, so it may run again", tag, queue,
                                 exc)
                    self._waiters_here().lost(layout, moved)
                    raise
                logger.warning("Could not record running task message %s yet (%s); trying "
                               "again in %.2fs", tag, exc, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover: the last delay is None

    async def _settle_after_record(self, deliveries: Iterable[Delivery]) -> None:
        """Wait until the deliveries handed over early are recorded (usually none are)."""
        with self._clients_lock:
            if not self._recording:
                return
            waits = [f for d in deliveries if (f := self._recording.get(d.delivery_tag))]
        for recorded in waits:
            await asyncio.shield(recorded)  # a cancelled settle must not cancel the record

    def _block_for(self, timeout: float) -> float:
        # A blocking read must end before the socket timeout would break the connection.
        if self._socket_timeout:
            timeout = min(timeout, max(float(self._socket_timeout) - 0.5, 0.01))
        return max(round(timeout, 3), 0.001)

    async def _reserve(
        self, layout: _Layout, count: int, moved: list[tuple[int, bytes]] | None = None
    ) -> tuple[list[Delivery], int]:
        """Run the fetch script (``moved``: ``(key number, message)`` of what blocking waits
        moved into this consumer's reserved lists, recorded first) and parse what it
        reserved.

        Returns the deliveries and how many elements were malformed (and dead-lettered).

        A run whose reply is lost (the connection broke) may have run: its retry, and any
        later fetch on this loop, claim its token, and the script hands over what that run
        reserved if its journal still holds it (redis_scripts.FETCH). Else (a later run
        reserved something first, or the journal expired) those messages wait in
        ``unacked`` for ``restore_visible``.
        """
        moved = moved or []
        waiters = self._waiters_here()
        head = (count, repr(time.time()))
        tail = (len(moved), *(x for pair in moved for x in pair), *layout.names)
        keys = waiters.fetch_keys(layout)
        ttl = max(int(self.visibility_timeout * 1000), 1000)
        tokens: list[str] = []  # this call's runs
        claims: list[str] = []  # what the last run claimed

        def run(client: avalkey.Valkey) -> Any:
            nonlocal claims
            claims = waiters.claims() + tokens  # a run before this one may have run
            tokens.append(waiters.token())
            args = (*head, tokens[-1], ttl, len(claims), *claims, *tail)
            return self._eval(client, _scripts.FETCH, keys, args)

        try:
            reply = await self._run("fetch", run)
        except BaseException:  # ConnectionLost, or cancelled: the last run may have run
            waiters.settle_claims([], tokens)
            raise
        waiters.settle_claims(claims, [])
        deliveries: list[Delivery] = []
        broken: list[tuple[bytes, bytes]] = []
        for i in range(0, len(reply), 3):
            number, tag, item = reply[i], reply[i + 1], reply[i + 2]
            if number == 0:
                logger.warning("A message a blocking wait took was no longer in this "
                               "consumer's reserved list (restored by another worker, or "
                               "recorded by a fetch whose reply was lost): not delivered "
                               "here: %r", item[:120])
                continue
            queue = layout.names[abs(number) - 1]
            if number < 0:  # the script already dead-lettered it
                _bad_element(queue, item, "not a kombu envelope")
                continue
            try:
                deliveries.append(_delivery(tag.decode(errors="replace"), item, queue))
            except DecodeError as exc:
                _bad_element(queue, item, str(exc))
                broken.append((tag, item))
        if broken:
            await self._dead_letter(broken)
        return deliveries, len(reply) // 3 - len(deliveries)

    async def _dead_letter(self, broken: list[tuple[bytes, bytes]]) -> None:
        tags = [tag for tag, _ in broken]
        await self._pipeline("fetch", [
            ("HDEL", self.unacked_key, *tags), ("ZREM", self.unacked_index_key, *tags),
            ("LPUSH", self.dead_letter_key, *(item for _, item in broken)),
        ], transaction=True)  # fmt: skip

    # -- settling ------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget deliveries for good: one pipeline round trip. Running loop."""
        if deliveries:
            await self._settle_after_record(deliveries)
            tags = [d.delivery_tag for d in deliveries]
            await self._pipeline(
                "ack", [("HDEL", self.unacked_key, *tags), ("ZREM", self.unacked_index_key, *tags)]
            )

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Put deliveries back at the consuming end, in their original order. Running loop.

        As kombu's restore, the message is marked ``redelivered``; it is pushed only if it
        was still reserved (not acked or restored meanwhile).
        """
        # RPUSH the last delivery first so that the first one ends up next in line.
        await self._move(reversed(deliveries), "R")

    async def reject(self, deliveries: Sequence[Delivery], requeue: bool = False) -> None:
        """Refuse deliveries. Running loop.

        ``requeue=True`` puts them at the back of their queue (LPUSH), as kombu's
        ``reject(requeue=True)`` does, so a message that keeps failing cannot starve the
        others; ``requeue=False`` moves them, unchanged, onto the dead-letter list
        (``celery-asyncio.dead-letter``), as every other broker of ours keeps them, where
        kombu's Redis transport drops them: never silently lost, once each (only what was
        still reserved moves).
        """
        if requeue:
            await self._move(deliveries, "L")
            return
        if deliveries:
            logger.info("Dead-lettering %d rejected message(s) to %r: %s", len(deliveries),
                        self.dead_letter_key, ", ".join(d.delivery_tag for d in deliveries))
            await self._move(deliveries, "L", self.dead_letter_key)

    async def _move(self, deliveries: Iterable[Delivery], end: str, to: str | None = None) -> None:
        """Push reserved deliveries onto their queue's ``end`` marked redelivered, or onto
        the list ``to`` unchanged; only those still reserved (MOVE)."""
        deliveries = list(deliveries)
        await self._settle_after_record(deliveries)
        args: list[Any] = [end]
        for d in deliveries:
            if to is not None:
                args += (d.delivery_tag, to, d.raw)
                continue
            envelope = json.loads(d.raw)
            priority = envelope_codec.priority_of(envelope)
            args += (d.delivery_tag, self._key_for(d.queue, priority), _redelivered(envelope))
        if len(args) > 1:
            keys = (self.unacked_key, self.unacked_index_key)
            await self._run("requeue", lambda c: self._eval(c, _scripts.MOVE, keys, args))

    async def defer(self, deliveries: Sequence[tuple[Delivery, float]]) -> None:
        """Take reserved deliveries out of ``unacked`` until their time (epoch seconds).

        They wait in the sorted set ``celery-asyncio.delayed`` (score: due time) and
        ``promote_due`` (any of our workers) puts them back first in line when due: a far
        ETA then pins no worker's memory, and no visibility timeout redelivers it early.
        """
        await self._settle_after_record(d for d, _ in deliveries)
        args: list[Any] = []
        for d, due in deliveries:
            priority = envelope_codec.priority_of(json.loads(d.raw))
            member = json.dumps([self._key_for(d.queue, priority), d.raw.decode()
                                 if isinstance(d.raw, bytes) else d.raw])
            args += (d.delivery_tag, repr(float(due)), member)
        if args:
            keys = (self.unacked_key, self.unacked_index_key, self.delayed_key)
            await self._run("defer", lambda c: self._eval(c, _scripts.DEFER, keys, args))

    async def promote_due(self, limit: int = 500) -> int:
        """Move deferred messages whose time has come back to their queues; returns how many."""
        keys, args = (self.delayed_key,), (repr(time.time()), limit)
        return int(await self._run("promote", lambda c: self._eval(c, _scripts.PROMOTE, keys, args)))

    # -- queues and lifecycle ------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        """Delete ``queue`` and its priority sub-queues; returns how many messages went.

        This and ``queue_length`` first wait for this process's pipelined publishes, so they
        see them (blocking the loop for at most about a round trip)."""
        self.confirm_published()
        keys = self._queue_keys(queue)
        commands = [command for key in keys for command in (("LLEN", key), ("DEL", key))]
        return sum((await self._pipeline("purge", commands, transaction=True))[::2])

    async def queue_length(self, queue: str) -> int:
        """Messages waiting in ``queue``, all priority sub-queues included. Running loop."""
        self.confirm_published()
        commands = [("LLEN", k) for k in self._queue_keys(queue)]
        return sum(await self._pipeline("queue_length", commands))

    async def ping(self) -> None:
        """Raise ConnectionLost unless the server answers PING. Running loop."""
        await self._run("ping", lambda c: c.ping())

    def close(self) -> None:
        """Disconnect the sync pool and forget clients of closed loops. Any thread; idempotent.
        Clients of loops still open are closed by ``aclose`` on their own loop."""
        self._publisher.close()
        with self._clients_lock:
            for loop in [lp for lp in self._async_clients if lp.is_closed()]:
                del self._async_clients[loop]
                self._waiters.pop(loop, None)

    async def aclose(self) -> None:
        """Stop the running loop's blocking waits and give back what they took (see
        redis_reserved.py), then disconnect its pool. Call on that loop; idempotent."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            waiters = self._waiters.pop(loop, None)
        if waiters is not None:
            await waiters.close()
        with self._clients_lock:
            client = self._async_clients.pop(loop, None)
        if client is not None:
            if waiters is not None and waiters.journaled:
                try:  # else it expires after the visibility timeout
                    await client.execute_command("DEL", waiters.journal_key)
                except _DRIVER_ERRORS as exc:
                    logger.debug("Could not delete the fetch journal %s (%s)",
                                 waiters.journal_key, exc)
            await client.aclose(close_connection_pool=True)
