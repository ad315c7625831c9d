"""The Redis result backend's groups and chord join, in Celery 5.7's key layout.

Keys (``G`` = ``celery-taskset-meta-<group id>``, see backends/groups.py): ``G`` a saved
group, ``G.s`` header size, ``G.t`` members added later, ``G.j`` sorted set of finished
members' parts scored by header index, ``G.d`` set of ``<task id>:<index>`` already
counted, ``G.c`` the claim. Upstream Celery's workers run their own script on the same keys,
so a chord may be joined by either.

A member's report is one script call (``_PART_SCRIPT``): it is recorded once, and the
member that completes the header claims the chord (``SET G.c <token> NX``) and gets every
part back in the same round trip. No polling task, no per-member read of the others. The
reports made on one event loop in the same turn go together, as one pipeline
(``LoopParts``): a loop worker finishing many members at once makes one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import valkey.exceptions as verr

from .groups import ChordPart

if TYPE_CHECKING:
    import valkey.asyncio as avalkey

    from .redis_sync import SyncSide

__all__ = ["LoopParts", "RedisChords"]

# KEYS: G.j G.t G.s G.d G G.c; ARGV: member, part, score, expires (s, 0 = none), group
# expires (s), claim expires (s), token. Returns {-1} (done already), {0} (not complete, or
# claimed by another), or {1, parts in score order}.
_PART_SCRIPT = """
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local expires, group_expires = tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('GET', ckey) == 'done' then
  return {-1}
end
if redis.call('SADD', dkey, ARGV[1]) == 1 then
  redis.call('ZADD', jkey, ARGV[3], ARGV[2])
end
if expires > 0 then
  for _, key in ipairs({jkey, tkey, skey, dkey}) do
    redis.call('EXPIRE', key, expires)
  end
  if group_expires > 0 then
    redis.call('EXPIRE', gkey, group_expires)
  end
end
local size = redis.call('GET', skey)
if not size then
  return {0}
end
local total = tonumber(size) + tonumber(redis.call('GET', tkey) or '0')
if redis.call('ZCARD', jkey) < total then
  return {0}
end
if not redis.call('SET', ckey, ARGV[7], 'NX', 'EX', ARGV[6]) then
  return {0}
end
return {1, redis.call('ZRANGE', jkey, 0, -1)}
"""
_PART_SHA = hashlib.sha1(_PART_SCRIPT.encode()).hexdigest()

# KEYS: G.c G.j G.t G.s G.d; ARGV: token, done expires (s). Drops the chord's keys and
# marks it done, if the claim is still ours.
_DONE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
  return 1
end
return 0
"""
_DONE_SHA = hashlib.sha1(_DONE_SCRIPT.encode()).hexdigest()


class RedisChords:
    """Mixed into RedisBackend (which provides the clients and key helpers)."""

    supports_chord_join = True

    if TYPE_CHECKING:
        expires: float | None
        chord_expires: float | None
        conf: Any

        def _clients(self) -> Any: ...

        def _sync_side(self) -> SyncSide: ...

        def _driver_errors(self) -> contextlib.AbstractContextManager[None]: ...

        def get_key_for_group(self, group_id: str, suffix: str = "") -> str: ...

    def _claim_seconds(self) -> int:
        """How long a claim holds (upstream's rule: twice the join timeout, at least 5 s)."""
        return max(5, int(float(self.conf.get("result_chord_join_timeout") or 5.0) * 2))

    async def _eval(self, client: avalkey.Valkey, sha: str, script: str, keys: list[str],
                    args: list[Any]) -> Any:
        try:
            return await client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except verr.NoScriptError:
            return await client.execute_command("EVAL", script, len(keys), *keys, *args)

    # -- groups -------------------------------------------------------------------------------

    async def _aset_group(self, group_id: str, payload: bytes, expires: float | None) -> None:
        with self._driver_errors():
            await self._clients().client.set(self.get_key_for_group(group_id), payload,
                                             ex=int(expires) if expires else None)

    async def _aget_group(self, group_id: str) -> bytes | None:
        with self._driver_errors():
            return await self._clients().client.get(self.get_key_for_group(group_id))  # type: ignore[no-any-return]

    async def _adelete_group(self, group_id: str) -> None:
        with self._driver_errors():
            await self._clients().client.delete(self.get_key_for_group(group_id))

    # -- chords -------------------------------------------------------------------------------

    async def _aset_chord_sizes(self, sizes: Sequence[tuple[str, int]]) -> None:
        """``G.s`` of each chord (and no stale claim), in one pipeline."""
        ttl = int(self.chord_expires) if self.chord_expires else None
        with self._driver_errors():
            pipe = self._clients().client.pipeline(transaction=False)
            for group_id, size in sizes:
                pipe.delete(self.get_key_for_group(group_id, ".c"))
                pipe.set(self.get_key_for_group(group_id, ".s"), int(size), ex=ttl)
            await pipe.execute()

    def _part_call(self, group_id: str, task_id: str, index: int | None,
                   part: bytes) -> tuple[list[str], list[Any], str]:
        """The part script's keys and arguments, and the claim token they carry."""
        key = self.get_key_for_group
        score = "+inf" if index is None else str(index)
        token = uuid.uuid4().hex
        group_expires = max(self.chord_expires or 0, self.expires or 0) \
            if self.chord_expires and self.expires else 0
        keys = [key(group_id, ".j"), key(group_id, ".t"), key(group_id, ".s"),
                key(group_id, ".d"), key(group_id), key(group_id, ".c")]
        args = [f"{task_id}:{score}", part, score, int(self.chord_expires or 0),
                int(group_expires), self._claim_seconds(), token]
        return keys, args, token

    @staticmethod
    def _part_reply(reply: Any, token: str) -> ChordPart:
        status = int(reply[0])
        if status == -1:
            return ChordPart(late=True)
        if status == 1:
            return ChordPart(claimed=True, parts=tuple(reply[1]), token=token)
        return ChordPart()

    async def achord_part(self, group_id: str, task_id: str, index: int | None,
                          part: bytes) -> ChordPart:
        keys, args, token = self._part_call(group_id, task_id, index, part)
        reply = await self._clients().chord_parts().report(keys, args)
        return self._part_reply(reply, token)

    def chord_part(self, group_id: str, task_id: str, index: int | None,
                   part: bytes) -> ChordPart:
        """``achord_part`` on the calling thread (any thread), over the blocking client of
        redis_sync.py: a sync worker thread reporting a chord member makes its one script
        round trip itself, without a hop to the portal loop and back (two thread wake-ups)."""
        keys, args, token = self._part_call(group_id, task_id, index, part)
        client = self._sync_side().client
        with self._driver_errors():
            try:
                reply = client.execute_command("EVALSHA", _PART_SHA, len(keys), *keys, *args)
            except verr.NoScriptError:
                reply = client.execute_command("EVAL", _PART_SCRIPT, len(keys), *keys, *args)
        return self._part_reply(reply, token)

    async def achord_done(self, group_id: str, token: str) -> None:
        key = self.get_key_for_group
        keys = [key(group_id, ".c"), key(group_id, ".j"), key(group_id, ".t"),
                key(group_id, ".s"), key(group_id, ".d")]
        done_for = max(self._claim_seconds() * 2, 300)
        with self._driver_errors():
            await self._eval(self._clients().client, _DONE_SHA, _DONE_SCRIPT, keys,
                             [token, done_for])

    async def aadd_to_chord(self, group_id: str, count: int = 1) -> None:
        key = self.get_key_for_group(group_id, ".t")
        with self._driver_errors():
            pipe = self._clients().client.pipeline(transaction=False)
            pipe.incrby(key, count)
            if self.chord_expires:
                pipe.expire(key, int(self.chord_expires))
            await pipe.execute()


class LoopParts:
    """The chord reports of one event loop, sent together (loop-bound: one per loop's
    clients, used on that loop only).

    ``report`` queues a report and returns a future for its script's reply; the first
    report of a turn schedules the send for the next turn (``call_soon``), so that every
    report made meanwhile, by the other tasks that finished in this turn, goes in the same
    pipeline: one round trip, one write and one read for them all. A report alone costs the
    one loop turn it waits, no round trip more.
    """

    def __init__(self, client: avalkey.Valkey,
                 errors: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._client = client
        self._errors = errors  # the backend's driver error conversion
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def report(self, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._send_pending)
        return future

    def _send_pending(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            with self._errors():
                replies = await self._run(batch, "EVALSHA", _PART_SHA)
                missing = [i for i, r in enumerate(replies) if isinstance(r, verr.NoScriptError)]
                if missing:
                    again = await self._run([batch[i] for i in missing], "EVAL", _PART_SCRIPT)
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except Exception as exc:  # the whole batch failed: each report raises it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its reporter was cancelled
                continue
            if isinstance(reply, Exception):  # converted as a lone command's error would be
                future.set_exception(_converted(reply, self._errors))
            else:
                future.set_result(reply)

    async def _run(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]],
                   command: str, script: str) -> list[Any]:
        """One call, or one pipeline of them; errors of single calls come back as values."""
        if len(batch) == 1:
            keys, args, _ = batch[0]
            try:
                return [await self._client.execute_command(command, script, len(keys), *keys,
                                                           *args)]
            except verr.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.execute_command(command, script, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


def _converted(error: Exception,
               errors: Callable[[], contextlib.AbstractContextManager[None]]) -> Exception:
    """``error`` as the backend's error conversion turns it (OperationalError...)."""
    try:
        with errors():
            raise error
    except Exception as exc:
        return exc
    return error  # pragma: no cover: the conversion always raises
