"""The Redis result backend's groups and chord join, in Celery 5.7's key layout.

Keys (``G`` = ``celery-taskset-meta-<group id>``, see backends/groups.py): ``G`` a saved
group, ``G.s`` header size, ``G.t`` members added later, ``G.j`` sorted set of finished
members' parts scored by header index, ``G.d`` set of ``<task id>:<index>`` already
counted, ``G.c`` the claim. Upstream Celery's workers run their own script on the same keys,
so a chord may be joined by either.

A member's report is one script call (``_PART_SCRIPT``): it is recorded once, and the
member that completes the header claims the chord (``SET G.c <token> NX``) and gets every
part back in the same round trip. No polling task, no per-member read of the others. The
reports made on one event loop in the same turn go together (``LoopParts``): one call of
the same script for those of one chord, in one round trip.
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

# KEYS: G.j G.t G.s G.d G G.c; ARGV: expires (s, 0 = none), group expires (s), claim
# expires (s), token, ordered ('1': G.j a sorted set by header index, as Celery 5 by default;
# '0': a list in finishing order, its result_chord_ordered=False), then member, part and
# score of each member reported (one, or several of one chord: LoopParts).
# Returns {-1} (done already), {0} (not complete, or claimed by another), or {1, parts}
# when the members reported completed the header and claimed it. The claim is this
# token's also when it holds already: a call the client retried (its reply lost) still
# gets the claim it made.
_PART_SCRIPT = """
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local expires, group_expires = tonumber(ARGV[1]), tonumber(ARGV[2])
local ordered = ARGV[5] == '1'
if redis.call('GET', ckey) == 'done' then
  return {-1}
end
for i = 6, #ARGV, 3 do
  if redis.call('SADD', dkey, ARGV[i]) == 1 then
    if ordered then
      redis.call('ZADD', jkey, ARGV[i + 2], ARGV[i + 1])
    else
      redis.call('RPUSH', jkey, ARGV[i + 1])
    end
  end
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
if (ordered and redis.call('ZCARD', jkey) or redis.call('LLEN', jkey)) < total then
  return {0}
end
if not redis.call('SET', ckey, ARGV[4], 'NX', 'EX', ARGV[3]) and redis.call('GET', ckey) ~= ARGV[4] then
  return {0}
end
if ordered then
  return {1, redis.call('ZRANGE', jkey, 0, -1)}
end
return {1, redis.call('LRANGE', jkey, 0, -1)}
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

    def _chord_ordered(self) -> bool:
        """Celery's ``result_chord_ordered`` transport option (default True): the join keeps
        header order (a sorted set); False keeps finishing order (a list). Every worker of a
        chord must agree, as with upstream."""
        options = self.conf.get("result_backend_transport_options") or {}
        return bool(options.get("result_chord_ordered", True))

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
        args = [int(self.chord_expires or 0), int(group_expires), self._claim_seconds(),
                token, "1" if self._chord_ordered() else "0", f"{task_id}:{score}", part, score]
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
    round trip. The reports of one chord become one script call (``_PART_SCRIPT`` with
    several members: they are recorded, the chord's keys' expiry renewed and its header checked once for
    them all); the calls of several chords, one pipeline. If the call completes the
    header, its last report gets the claim (with its own token) and the others the reply
    of a member that did not complete it, so that the body is still sent once. A report
    alone costs the one loop turn it waits, no round trip more.
    """

    def __init__(self, client: avalkey.Valkey,
                 errors: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._client = client
        self._errors = errors  # the backend's driver error conversion
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def report(self, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue a report (``_PART_SCRIPT``'s keys and arguments); the future gets its
        reply, or the error that sending it raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._send_pending)
        return future

    def _send_pending(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(_calls(batch)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            with self._errors():
                replies = await self._run(calls, evalsha=True)
                missing = [i for i, r in enumerate(replies) if isinstance(r, verr.NoScriptError)]
                if missing:
                    again = await self._run([calls[i] for i in missing], evalsha=False)
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except Exception as exc:  # the whole batch failed: each report raises it
            for call in calls:
                call.fail(exc)
            return
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):  # converted as a lone command's error would be
                call.fail(_converted(reply, self._errors))
            else:
                call.settle(reply)

    async def _run(self, calls: list[_Call], evalsha: bool) -> list[Any]:
        """One call, or one pipeline of them; errors of single calls come back as values."""
        if len(calls) == 1:
            try:
                return [await self._client.execute_command(*calls[0].command(evalsha))]
            except verr.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*call.command(evalsha))
        return list(await pipe.execute(raise_on_error=False))


class _Call:
    """One script call of LoopParts: the reports of one chord (same keys and expiries)."""

    __slots__ = ("args", "futures", "keys")

    def __init__(self, keys: list[str], args: list[Any], future: asyncio.Future[Any]) -> None:
        self.keys = keys
        self.args = [args]  # each report's _PART_SCRIPT arguments (one member's)
        self.futures = [future]

    def command(self, evalsha: bool) -> list[Any]:
        """One script call for every report: the expiries of the first (all alike), the
        token of the last (the one a claim goes to), each one's member, part and score."""
        first, last = self.args[0], self.args[-1]
        members = [value for args in self.args for value in args[5:8]]
        return ["EVALSHA" if evalsha else "EVAL", _PART_SHA if evalsha else _PART_SCRIPT,
                len(self.keys), *self.keys, *first[:3], last[3], first[4], *members]

    def settle(self, reply: Any) -> None:
        """The call's reply: a claim goes to the last report (its token was sent), the
        others get "not complete"; "done already" goes to all."""
        last = len(self.futures) - 1
        for i, future in enumerate(self.futures):
            if not future.done():  # else its reporter was cancelled
                future.set_result(reply if i == last or int(reply[0]) != 1 else [0])

    def fail(self, exc: Exception) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(exc)


def _calls(batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> list[_Call]:
    """The batch's reports, one call per chord (in the order of their first report)."""
    calls: dict[tuple[Any, ...], _Call] = {}
    for keys, args, future in batch:
        key = (*keys, *args[:3], args[4])  # the chord's keys, expiries and order
        call = calls.get(key)
        if call is None:
            calls[key] = _Call(keys, args, future)
        else:
            call.args.append(args)
            call.futures.append(future)
    return list(calls.values())


def _converted(error: Exception,
               errors: Callable[[], contextlib.AbstractContextManager[None]]) -> Exception:
    """``error`` as the backend's error conversion turns it (OperationalError...)."""
    try:
        with errors():
            raise error
    except Exception as exc:
        return exc
    return error  # pragma: no cover: the conversion always raises
