"""The Lua scripts of the Redis transport (redis.py), each run with EVALSHA.

Each keeps one operation atomic on the server: reserving a batch (recorded in ``unacked`` as
kombu records it), moving reserved messages back or into the delayed set, promoting due
ones, and releasing the restore lock only if we still hold it.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

__all__ = ["DEFER", "FETCH", "MOVE", "PROMOTE", "UNLOCK", "Script"]


class Script(NamedTuple):
    """A script's source and the SHA1 that EVALSHA names it by."""

    source: str
    sha: str


def _script(source: str) -> Script:
    return Script(source, hashlib.sha1(source.encode()).hexdigest())


# KEYS: unacked, unacked_index, dead-letter, queue keys (in reading order).
# ARGV: max_count, now, pre-popped item ("" if none), its key number, logical queue names.
# Returns flat triples {key number, delivery_tag, item}; a negative key number means the item
# was malformed and went to the dead-letter list instead of unacked.
FETCH = _script("""
local unacked, index, dead = KEYS[1], KEYS[2], KEYS[3]
local want, now, nkeys = tonumber(ARGV[1]), tonumber(ARGV[2]), #KEYS - 3
local seq, micros = 0, math.floor(now * 1e6)
local out = {}
local function reserve(k, item)
  local ok, env = pcall(cjson.decode, item)
  local props = ok and type(env) == 'table' and env['properties']
  local tag = type(props) == 'table' and props['delivery_tag']
  if type(tag) ~= 'string' or type(env['body']) ~= 'string' then
    redis.call('LPUSH', dead, item)
    out[#out + 1] = -k; out[#out + 1] = ''; out[#out + 1] = item
    return
  end
  local info = props['delivery_info']
  local ex, rk = '', ARGV[4 + k]
  if type(info) == 'table' then
    if type(info['exchange']) == 'string' then ex = info['exchange'] end
    if type(info['routing_key']) == 'string' then rk = info['routing_key'] end
  end
  redis.call('HSET', unacked, tag,
    '[' .. item .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
  -- A distinct score per message keeps the batch's order for restore_visible. Counting in
  -- whole microseconds: rounding now + seq * 1e-6 to six decimals could make two equal.
  seq = seq + 1
  redis.call('ZADD', index, string.format('%.6f', (micros + seq) / 1e6), tag)
  out[#out + 1] = k; out[#out + 1] = tag; out[#out + 1] = item
end
if ARGV[3] ~= '' then
  reserve(tonumber(ARGV[4]), ARGV[3])
  want = want - 1
end
for k = 1, nkeys do
  while want > 0 do
    local item = redis.call('RPOP', KEYS[3 + k])
    if not item then break end
    reserve(k, item)
    want = want - 1
  end
  if want <= 0 then break end
end
return out
""")

# KEYS: unacked, unacked_index. ARGV: "L" or "R" (push end), then triples
# {tag, destination key, payload}. A message is pushed only if this call removed it from
# unacked, so a requeue racing an ack or another restore never duplicates it.
# (Destination keys travel in ARGV: fine on a single server, which is all kombu supports.)
MOVE = _script("""
local push = ARGV[1] == 'L' and 'LPUSH' or 'RPUSH'
local moved = 0
for i = 2, #ARGV, 3 do
  redis.call('ZREM', KEYS[2], ARGV[i])
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 and ARGV[i + 2] ~= '' then
    redis.call(push, ARGV[i + 1], ARGV[i + 2])
    moved = moved + 1
  end
end
return moved
""")

# KEYS: unacked, unacked_index, delayed. ARGV: triples {tag, due score, member}. Moves each
# reserved message (only if this call removed it from unacked) into the delayed zset.
DEFER = _script("""
local moved = 0
for i = 1, #ARGV, 3 do
  redis.call('ZREM', KEYS[2], ARGV[i])
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[3], ARGV[i + 1], ARGV[i + 2])
    moved = moved + 1
  end
end
return moved
""")

# KEYS: delayed. ARGV: now, limit. Pushes every due member ([queue key, payload] as JSON) to
# the consuming end of its queue, atomically, so that of several workers only one moves it.
PROMOTE = _script("""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local ok, entry = pcall(cjson.decode, member)
  if ok and type(entry) == 'table' and type(entry[1]) == 'string' then
    redis.call('RPUSH', entry[1], entry[2])
  end
end
return #due
""")

UNLOCK = _script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")
