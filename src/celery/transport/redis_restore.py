"""Giving back what dead consumers reserved on Redis (``restore_visible``); a mixin of
``RedisTransport`` (transport/redis.py), whose clients, scripts and key layout it uses.

Two kinds of reservation come back once older than ``visibility_timeout``, under kombu's
``unacked_mutex`` so that one process at a time restores:

* entries of kombu's ``unacked`` hash (``unacked_index`` scores their reservation time):
  moved back to the tail of their queue, oldest first in line, marked ``redelivered``, as
  kombu restores them; a malformed entry goes to the dead-letter list;
* our consumers' reserved lists (redis_reserved.py) whose heartbeat is that old.

Thread-safety: as RedisTransport's coroutines (any loop; one client per loop).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import DecodeError
from ..messaging import limits
from . import envelope as envelope_codec
from . import redis_scripts as _scripts
from .redis_reserved import restore_dead

__all__ = ["RedisRestore"]

logger = logging.getLogger("celery.transport.redis")


def _redelivered_raw(item: bytes) -> bytes | str:
    """A stored envelope marked redelivered; unchanged if it is not one (a fetch then
    dead-letters it)."""
    try:
        return envelope_codec.mark_redelivered(envelope_codec.loads(item))
    except DecodeError:
        return item


class RedisRestore:
    """``restore_visible`` of RedisTransport."""

    if TYPE_CHECKING:  # what RedisTransport provides
        visibility_timeout: float
        keyprefix: str
        unacked_key: str
        unacked_index_key: str
        unacked_mutex_key: str
        unacked_mutex_expire: float
        unacked_restore_limit: Any
        dead_letter_key: str

        async def _run(self, what: str, op: Callable[[Any], Any], retries: int = 1,
                       first: float = 0) -> Any: ...

        async def _eval(self, client: Any, script: _scripts.Script, keys: Sequence,
                        args: Sequence) -> Any: ...

        def _key_for(self, queue: str, priority: Any) -> str: ...

        def _binding_table(self, exchange: str) -> str: ...

        def _bound(self, members: Iterable[bytes | str], routing_key: str) -> list[str]: ...

    async def restore_visible(self) -> int:
        """Requeue messages reserved longer than ``visibility_timeout``; returns the count.

        Does nothing (returns 0) while another process holds ``unacked_mutex``. Running loop.
        """
        token = uuid.uuid4().hex
        px = int(self.unacked_mutex_expire * 1000)

        async def locked(client: Any) -> int:
            # The GET lets a retry after a dropped connection see that it holds the lock.
            key = self.unacked_mutex_key
            if not await client.set(key, token, nx=True, px=px):
                if await client.get(key) != token.encode():
                    return 0
            try:
                restored = await self._restore_expired(client)
                ceiling = time.time() - self.visibility_timeout
                return restored + await restore_dead(client, self._eval, self.keyprefix,
                                                     ceiling, _redelivered_raw)
            finally:
                await self._eval(client, _scripts.UNLOCK, (key,), (token,))

        return await self._run("restore_visible", locked)

    async def _restore_expired(self, client: Any) -> int:
        ceiling = time.time() - self.visibility_timeout
        limit = self.unacked_restore_limit
        # Newest first, each RPUSHed in turn: the oldest ends up next in line (as kombu).
        command = ["ZRANGE", self.unacked_index_key, repr(ceiling), 0, "BYSCORE", "REV"]
        tags = await client.execute_command(*command, *(("LIMIT", 0, limit) if limit else ()))
        if not tags:
            return 0
        values = await client.execute_command("HMGET", self.unacked_key, *tags)
        args: list[Any] = ["R"]
        for tag, value in zip(tags, values, strict=True):
            args += (tag, *await self._restore_target(client, tag, value))
        keys = (self.unacked_key, self.unacked_index_key)
        restored = await self._eval(client, _scripts.MOVE, keys, args)
        if restored:
            logger.info("Restored %d unacknowledged message(s) to their queues", restored)
        return restored

    async def _restore_target(
        self, client: Any, tag: bytes, value: bytes | None
    ) -> tuple[str, Any]:
        """``(destination key, payload)`` for one unacked entry ("" payload: just drop it)."""
        if value is None:
            return "", ""  # index entry without its hash entry: only remove it
        try:
            entry = limits.loads_json(value, "unacked entry")
            if not isinstance(entry, list) or len(entry) != 3:
                raise DecodeError("unacked entry is not [envelope, exchange, routing key]")
            envelope, exchange, routing_key = entry
            if not isinstance(envelope, dict) or not isinstance(routing_key, str) \
                    or not isinstance(exchange, str):
                raise DecodeError("unacked entry is not [envelope, exchange, routing key]")
            queue = routing_key
            if exchange:  # kombu's lookup in a direct exchange's binding table
                members = await client.execute_command("SMEMBERS", self._binding_table(exchange))
                queue = next(iter(self._bound(members, routing_key)), queue)
            priority = envelope_codec.priority_of(envelope)
            return self._key_for(queue, priority), envelope_codec.mark_redelivered(envelope)
        except DecodeError as exc:
            logger.warning("Malformed unacked entry %r (%s) moved to %r: %r",
                           tag, exc, self.dead_letter_key, value[:120])  # fmt: skip
            return self.dead_letter_key, value

