"""Remote control (``Mailbox``) on Redis, laid out as kombu lays it out; a mixin of
``RedisTransport`` (transport/redis.py), whose clients, retries and key layout it uses.

* A fanout exchange is the PUB/SUB channel ``fanout_prefix + exchange`` (kombu's default
  prefix is ``/{db}.``, e.g. ``/0.celery.pidbox``), subscribed with PSUBSCRIBE as kombu does.
  kombu publishes a fanout message that has a routing key to ``<channel>/<routing key>``
  (upstream events: ``/0.celeryev/task.multi``); ``fanout_subscribe(exchange, routing_key)``
  subscribes to those too.
* A direct exchange is the binding set ``_kombu.binding.<exchange>`` (members
  ``routing_key + sep + "" + sep + queue``); ``direct_publish`` LPUSHes onto each queue bound
  with the routing key, as kombu's ``_lookup``/``_put`` do.

Thread-safety: as RedisTransport's coroutines (any loop; one client per loop). A
subscription belongs to the loop that made it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .redis_publish import DRIVER_ERRORS as _DRIVER_ERRORS

__all__ = ["RedisMailbox"]

logger = logging.getLogger(__name__)


def _texts(items: Iterable[bytes | str], where: str) -> list[str]:
    """The payloads as text; one that is not UTF-8 (not a kombu envelope, which is JSON) is
    skipped with a warning, so that it never stops the commands around it."""
    out = []
    for item in items:
        try:
            out.append(item.decode() if isinstance(item, bytes) else item)
        except UnicodeDecodeError as exc:
            logger.warning("Skipping a payload of the Redis %s that is not UTF-8 text (%s): %r",
                           where, exc, item[:120])
    return out


class RedisMailbox:
    """``Mailbox`` methods of RedisTransport."""

    if TYPE_CHECKING:  # what RedisTransport provides
        fanout_prefix: str
        sep: str
        max_retries: int

        def _client(self) -> Any: ...

        async def _run(self, what: str, op: Callable[[Any], Any], retries: int = 1,
                       first: float = 0) -> Any: ...

        async def _pipeline(self, what: str, commands: Iterable[tuple], transaction: bool = False,
                            **retry: Any) -> list: ...

        def _lost(self, what: str, exc: BaseException) -> Exception: ...

        def _queue_keys(self, queue: str) -> tuple[str, ...]: ...

        def _block_for(self, timeout: float) -> float: ...

        def _binding_table(self, exchange: str) -> str: ...

        def _bound(self, members: Iterable[bytes | str], routing_key: str) -> list[str]: ...

    async def fanout_publish(self, exchange: str, payload: str,
                             routing_key: str | None = None) -> None:
        """PUBLISH to the exchange's channel, or with ``routing_key`` to
        ``<channel>/<routing key>`` as kombu does (every subscriber gets it, none later)."""
        channel = self.fanout_prefix + exchange
        if routing_key:
            channel = f"{channel}/{routing_key}"
        await self._run("broadcast", lambda c: c.publish(channel, payload), self.max_retries, 0.1)

    async def fanout_subscribe(self, exchange: str,
                               routing_key: str | None = None) -> _Subscription:
        """PSUBSCRIBE to the exchange's channel on a connection of the running loop's pool;
        with ``routing_key``, to ``<channel>/<pattern>`` as well (kombu turns ``#`` into the
        glob ``*``), where kombu publishes a fanout message that has a routing key."""
        channels = [self.fanout_prefix + exchange]
        if routing_key is not None:
            channels.append(f"{channels[0]}/{routing_key.replace('#', '*')}")
        pubsub = self._client().pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(*channels)
        except _DRIVER_ERRORS as exc:
            await pubsub.aclose()
            raise self._lost("subscribe", exc) from exc
        return _Subscription(pubsub, self._lost)

    def _binding(self, exchange: str, routing_key: str, queue: str) -> tuple[str, str]:
        return self._binding_table(exchange), self.sep.join((routing_key, "", queue))

    async def direct_bind(self, exchange: str, routing_key: str, queue: str) -> None:
        key, member = self._binding(exchange, routing_key, queue)
        await self._run("bind", lambda c: c.sadd(key, member))

    async def direct_unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        key, member = self._binding(exchange, routing_key, queue)
        await self._pipeline("unbind", [("SREM", key, member),
                                        *(("DEL", k) for k in self._queue_keys(queue))])

    async def direct_publish(self, exchange: str, routing_key: str, payload: str) -> int:
        """LPUSH onto every queue bound with ``routing_key`` (kombu's direct ``_lookup``)."""
        key = self._binding_table(exchange)
        members = await self._run("lookup", lambda c: c.smembers(key))
        queues = set(self._bound(members, routing_key))
        if queues:
            await self._pipeline("reply", [("LPUSH", self._queue_keys(q)[0], payload)
                                           for q in sorted(queues)])
        return len(queues)

    async def pop_raw(self, queue: str, timeout: float) -> list[str]:
        """BRPOP the first payload (up to ``timeout``), then take what else waits."""
        keys = self._queue_keys(queue)
        block = self._block_for(timeout)
        first = await self._run("pop", lambda c: c.execute_command("BRPOP", *keys, block))
        if not first:
            return []
        rest = await self._pipeline("pop", [("RPOP", k, 1000) for k in keys])
        items = [first[1]] + [i for popped in rest if popped for i in popped]
        return _texts(items, f"reply queue {queue!r}")


class _Subscription:
    """A PSUBSCRIBEd connection (``RedisTransport.fanout_subscribe``); its event loop only."""

    def __init__(self, pubsub: Any, lost: Callable[[str, BaseException], Exception]) -> None:
        self._pubsub = pubsub
        self._lost = lost

    async def get(self, timeout: float) -> list[str]:
        # get_message returns None early for a (un)subscribe confirmation: wait out the
        # rest of ``timeout`` for the first payload, then take only what is already here.
        received: list[str] = []
        if self._pubsub is None:  # closed
            return received
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            wait = 0.0 if received else max(deadline - time.monotonic(), 0.0)
            try:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            except _DRIVER_ERRORS as exc:
                raise self._lost("subscription", exc) from exc
            if msg is not None and msg.get("type") in ("message", "pmessage"):
                received += _texts([msg["data"]], f"channel {msg.get('channel')!r}")
            elif received or time.monotonic() >= deadline:
                return received

    async def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except _DRIVER_ERRORS:
                pass
