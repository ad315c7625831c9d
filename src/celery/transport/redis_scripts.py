"""The Lua scripts of the Redis transport (redis.py, redis_reserved.py), each run with
EVALSHA.

Each keeps one operation atomic on the server: reserving a batch (recorded in ``unacked`` as
kombu records it, taking what a blocking wait moved out of the consumer's own lists),
moving reserved messages back or into the delayed set, promoting due ones, giving back a
consumer's lists, and releasing the restore lock only if we still hold it.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

__all__ = ["DEFER", "FETCH", "MOVE", "PROMOTE", "RECLAIM", "RESTORE_LIST", "UNLOCK", "Script"]


class Script(NamedTuple):
    """A script's source and the SHA1 that EVALSHA names it by."""

    source: str
    sha: str


def _script(source: str) -> Script:
    return Script(source, hashlib.sha1(source.encode()).hexdigest())


# KEYS: unacked, unacked_index, dead-letter, the reserved-lists registry, the consumer's
# journal, the queue keys (n, in reading order), then the consumer's reserved list of each
# queue key (n, same order).
# ARGV: max_count, now, this call's token, the journal's time to live (ms), c, then c
# claimed tokens, m, then m pairs {key number, item} that a blocking wait moved into that
# key's reserved list, then the n logical queue names.
# Returns flat triples {key number, delivery_tag, item}; a negative key number means the item
# was malformed and went to the dead-letter list instead of unacked; 0 that a moved item was
# no longer in its reserved list (restored meanwhile: this consumer was taken for dead).
# Each moved item leaves its list in the same step as it enters unacked; the consumer's
# lists' heartbeats in the registry are refreshed (if they are registered).
# The journal (a JSON array: token, then {queue name, tag, item length} per message) holds
# what the last call that reserved anything reserved. A call whose reply was lost may have
# run: the next call claims its token, and if the journal holds it, what it reserved (still
# in unacked) is returned first, and counts in max_count; a moved item among it is not
# reserved again. Nothing is ever returned twice: the claiming call writes the journal anew.
FETCH = _script("""
local unacked, index, dead, registry, journal = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local nkeys = (#KEYS - 5) / 2
local want, now, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local claims = tonumber(ARGV[5])
local at = 6 + claims
local moved = tonumber(ARGV[at])
local names = at + 2 * moved
local seq, micros = 0, math.floor(now * 1e6)
local out, kept, replayed = {}, {token}, {}
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
  local ex, rk = '', ARGV[names + k]
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
  kept[#kept + 1] = ARGV[names + k]; kept[#kept + 1] = tag; kept[#kept + 1] = #item
end
if claims > 0 then
  local last = redis.call('GET', journal)
  local ok, j = pcall(cjson.decode, last or '')
  local claimed = false
  if ok and type(j) == 'table' then
    for c = 6, at - 1 do
      if ARGV[c] == j[1] then claimed = true end
    end
  end
  -- Each queue name's first key number in this call (the claimed run may have read
  -- other queues: a message of a queue not read now stays for the restore).
  local number = {}
  for k = nkeys, 1, -1 do number[ARGV[names + k]] = k end
  for i = 2, claimed and #j - 2 or 0, 3 do
    local name, tag, len = j[i], j[i + 1], j[i + 2]
    local k = number[name]
    local entry = k and type(tag) == 'string' and type(len) == 'number'
      and redis.call('HGET', unacked, tag)
    -- The entry as reserve wrote it: '[' item ', ' exchange ', ' routing key ']'.
    if entry and string.sub(entry, 1, 1) == '[' and string.sub(entry, len + 2, len + 3) == ', ' then
      local item = string.sub(entry, 2, len + 1)
      replayed[item] = true
      out[#out + 1] = k; out[#out + 1] = tag; out[#out + 1] = item
      kept[#kept + 1] = name; kept[#kept + 1] = tag; kept[#kept + 1] = len
      want = want - 1
    end
  end
end
for k = 1, nkeys do
  redis.call('ZADD', registry, 'XX', ARGV[2], KEYS[5 + nkeys + k])
end
for i = 1, moved do
  local k, item = tonumber(ARGV[at + 2 * i - 1]), ARGV[at + 2 * i]
  if redis.call('LREM', KEYS[5 + nkeys + k], 1, item) == 1 then
    reserve(k, item)
    want = want - 1
  elseif not replayed[item] then
    out[#out + 1] = 0; out[#out + 1] = ''; out[#out + 1] = item
    want = want - 1
  end
end
for k = 1, nkeys do
  while want > 0 do
    local item = redis.call('RPOP', KEYS[5 + k])
    if not item then break end
    reserve(k, item)
    want = want - 1
  end
  if want <= 0 then break end
end
if #kept > 1 then
  redis.call('SET', journal, cjson.encode(kept), 'PX', ARGV[4])
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

# KEYS: a consumer's reserved list, the queue key it takes from. Moves everything in the list
# back to the consuming end of the queue, the oldest first in line, unchanged; returns how
# many. For a live consumer's own list, when a blocking wait's reply was lost.
RECLAIM = _script("""
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
for i = 1, #items do redis.call('RPUSH', KEYS[2], items[i]) end
return #items
""")

# KEYS: the reserved-lists registry, a reserved list, the queue key it takes from.
# ARGV: the heartbeat ceiling, the list's length when it was read, then its items as they go
# back (marked redelivered), newest first. Gives back a dead consumer's list: only if its
# heartbeat is still older than the ceiling and the list unchanged, so a consumer that
# turns out to be alive keeps it; returns how many moved (-1: left alone).
RESTORE_LIST = _script("""
local beat = redis.call('ZSCORE', KEYS[1], KEYS[2])
if beat and tonumber(beat) > tonumber(ARGV[1]) then return -1 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return -1 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], KEYS[2])
for i = 3, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
return #ARGV - 2
""")

UNLOCK = _script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")
