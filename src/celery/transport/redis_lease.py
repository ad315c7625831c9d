"""The beat leader lease on Redis/Valkey (transport/lease.py says what a lease promises).

Keys (``global_keyprefix`` first), for a lease named ``N``::

    _celery_beat.N.leader   STRING "<token>:<holder>", with a TTL (PX): the current term
    _celery_beat.N.token    STRING the last fencing token given (INCR)
    _celery_beat.N.runs     HASH   entry name -> epoch seconds of its last claimed run

Each operation is one Lua script, so checking the term and acting on it is atomic: taking
the lease is ``SET NX PX`` of a new token (INCR), renewing is ``PEXPIRE`` only while the
value is still ours, and a claim writes the run only while it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .lease import Claim
from .redis_scripts import _script

if TYPE_CHECKING:
    from .redis import RedisTransport

__all__ = ["RedisLease"]

# KEYS: leader, token counter. ARGV: holder, ttl in ms. Returns the new token, or 0 if held.
_ACQUIRE = _script("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2])
return token
""")

# KEYS: leader. ARGV: our value, ttl in ms (0: release). Returns 1 if it was ours.
_RENEW = _script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
""")

# KEYS: leader, runs. ARGV: our value, entry, run (epoch seconds as text).
# Returns {0} if the lease is not ours, {2, recorded} if a run as late is recorded, else {1}.
_CLAIM = _script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local last = redis.call('HGET', KEYS[2], ARGV[2])
if last and tonumber(last) >= tonumber(ARGV[3]) then return {2, last} end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return {1}
""")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLease:
    """A lease named ``name`` on one Redis transport's server."""

    def __init__(self, transport: RedisTransport, name: str) -> None:
        self._transport = transport
        base = f"{transport.keyprefix}_celery_beat.{name}"
        self._leader, self._counter, self._runs = f"{base}.leader", f"{base}.token", f"{base}.runs"
        self._value = ""
        self.token = 0

    async def _eval(self, what: str, script: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        transport = self._transport
        return await transport._run(what, lambda c: transport._eval(c, script, keys, args))

    async def acquire(self, holder: str, ttl: float) -> bool:
        token = int(await self._eval("beat lease", _ACQUIRE, (self._leader, self._counter),
                                     (holder, max(int(ttl * 1000), 1))))
        if token:
            self.token, self._value = token, f"{token}:{holder}"
        return bool(token)

    async def renew(self, ttl: float) -> bool:
        if not self._value:
            return False
        return bool(await self._eval("beat lease", _RENEW, (self._leader,),
                                     (self._value, max(int(ttl * 1000), 1))))

    async def release(self) -> None:
        if self._value:
            await self._eval("beat lease", _RENEW, (self._leader,), (self._value, 0))

    async def claim(self, entry: str, run_at: float) -> tuple[Claim, float | None]:
        if not self._value:
            return Claim.LOST, None
        reply = await self._eval("beat claim", _CLAIM, (self._leader, self._runs),
                                 (self._value, entry, repr(float(run_at))))
        outcome = Claim(int(reply[0]))
        if outcome is Claim.ALREADY:
            recorded = float(_text(reply[1]))
            # Our own write, when a dropped connection made _run send the claim again.
            return (Claim.CLAIMED if recorded == float(run_at) else outcome), recorded
        return outcome, run_at if outcome is Claim.CLAIMED else None

    async def runs(self) -> dict[str, float]:
        found = await self._transport._run("beat runs", lambda c: c.hgetall(self._runs))
        return {_text(k): float(_text(v)) for k, v in found.items()}

    async def holder(self) -> str | None:
        value = await self._transport._run("beat lease", lambda c: c.get(self._leader))
        return _text(value).partition(":")[2] if value else None
