"""The Lua script both Redis brokers publish with, and the arguments of one call.

One call appends a batch of events to one log and to their channels' streams,
numbering them as it goes: Redis runs scripts one at a time, so a call is atomic and
its events are consecutive in the log. ``redis+cluster://``
runs the same script on each log shard's keys, with a floor that keeps a worker's
publishes in order across shards, and writes references for events homed on another
shard (``app.broker.redis_cluster.publishing``). A keyed publish is looked up, and
recorded, by the same call that numbers its events (``app.broker.idempotency``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.broker.base import Draft
from app.broker.redis_entries import CHANNEL_SEPARATOR, flag

__all__ = [
    "BIND_KEY_SCRIPT",
    "CONFLICTING",
    "PUBLISH_SCRIPT",
    "REPLAYED",
    "KeyedRun",
    "publish_arguments",
    "split_reply",
]

REPLAYED = ord("r")
"""A keyed publish's status: its record answered it, nothing was written."""
CONFLICTING = ord("c")
"""A keyed publish's status: its key is bound to other drafts, nothing was written."""


@dataclass(frozen=True, slots=True)
class KeyedRun:
    """A keyed publish's drafts in one script call: from the call's ``first`` draft (from
    0), ``count`` of them, recorded under ``record_key`` with ``fingerprint`` (hex)."""

    first: int
    count: int
    record_key: str
    fingerprint: str


# KEYS: log, counter, then every channel stream of the call and every alias key (each
# once), then the record keys of keyed publishes. ARGV: log size, history size, channel TTL
# (ms), event count, shard count S, this log's shard k, a floor position (ms, seq; 0 0 for
# none): the call's first event gets an entry id whose position (ms, n*S + k) is above it
# (``redis+cluster://`` keeps a worker's publishes in order across shards so), the
# idempotency window (ms), the index of the last KEYS entry that is not a record key, and
# the number G of keyed publishes; then per keyed publish: the index of its first event,
# its event count, its record key's index into KEYS and its fingerprint (hex); then per
# event: its channel names (the log's channel field), body, private flag, the publisher's
# own id ('' for none), a reference token ('' for none), alias count m and m indexes into
# KEYS, channel count k and k indexes into KEYS. An alias key (a supplied id's, a reference
# token's) maps to the event's entry id, set only by the first event that carries it and
# expiring with the channel TTL. An event with a reference token is not an event of this
# log but a *reference* to one written elsewhere (``redis+cluster://``): its channel
# entries carry the token (``r``), and the log gets a tick (``t``, numbered like the
# event before it) whose id they share, so channel ids stay log ids.
# A keyed publish's record key holds '<fingerprint>' or '<fingerprint> <entry id>...' and
# expires after the window (``app.broker.idempotency``). Found with another fingerprint: its
# events are skipped (status 'c'), as they are when it holds another number of ids than the
# publish has events here. Found with its entry ids: skipped, and answered with
# them (status 'r'); the record is written again as it is, so that a ``WAIT`` after the
# call (``redis+cluster://``) waits until the replicas have what it answers with. Else
# (absent, or holding the fingerprint alone, which ``redis+cluster://`` binds a key with
# before it publishes) its events are written and the record holds their ids once the
# last is written (status 'p').
# Returns the entry ids in order ('' for a refused publish's events), followed, when G > 0,
# by one status character per keyed publish. `previous` remembers each stream's newest
# entry, so a call of many events on one channel reads it once.
PUBLISH_SCRIPT = """
local count = tonumber(ARGV[4])
local S, shard = tonumber(ARGV[5]), tonumber(ARGV[6])
local floor_ms, floor_seq = tonumber(ARGV[7]), tonumber(ARGV[8])
local window, last_plain_key, G = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
local previous = {}
local ids = {}
local a = 12 + 4 * G
local keyed_at = {}
for g = 1, G do
  keyed_at[tonumber(ARGV[8 + 4 * g])] = g
end
local statuses = {}
local record_after = {}
local function log_id()
  if floor_ms == 0 then return '*' end
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > floor_ms then return '*' end
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  local lms, ln = -1, -1
  if last then
    local dash = string.find(last[1], '-', 1, true)
    lms = tonumber(string.sub(last[1], 1, dash - 1))
    ln = tonumber(string.sub(last[1], dash + 1))
  end
  if lms > floor_ms then return '*' end
  local next_n = math.max(0, math.floor((floor_seq - shard) / S) + 1)
  if lms == floor_ms and ln + 1 > next_n then next_n = ln + 1 end
  return string.format('%d-%d', floor_ms, next_n)
end
-- Appends an event's optional fields (the private flag, a supplied id) to an entry's.
local function optional(fields, private, supplied)
  if private ~= '' then
    fields[#fields + 1] = 'p'
    fields[#fields + 1] = private
  end
  if supplied ~= '' then
    fields[#fields + 1] = 'i'
    fields[#fields + 1] = supplied
  end
  return fields
end
-- Writes event e, whose arguments start at ARGV[a].
local function write(e)
  local names, body, private, supplied = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local ref = ARGV[a + 4]
  local m = tonumber(ARGV[a + 5])
  local k = tonumber(ARGV[a + 6 + m])
  -- The usual event (public, no supplied id, not a reference) is most of the traffic:
  -- its fields spelled out, no table built and unpacked, no empty private flag.
  local plain = private == '' and supplied == '' and ref == ''
  local several = string.find(names, '\\n', 1, true)
  local id
  if plain then
    n = n + 1
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], log_id(),
      'n', n, 'c', names, 'b', body)
    floor_ms = 0  -- the call's next events follow this one in the log
  elseif ref == '' then
    n = n + 1
    local log_fields = optional({'n', n, 'c', names, 'b', body}, private, supplied)
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], log_id(), unpack(log_fields))
    floor_ms = 0  -- the call's next events follow this one in the log
  else
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't', '1', 'n', n)
  end
  ids[e] = id
  for j = 1, k do
    local key = KEYS[tonumber(ARGV[a + 6 + m + j])]
    local before = previous[key]
    if before == nil then
      local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
      before = last and last[1] or false
    end
    if plain and before and not several then
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], id, 'b', body, 'v', before)
    else
      local fields = optional({'b', body}, private, supplied)
      if several then
        fields[#fields + 1] = 'c'
        fields[#fields + 1] = names
      end
      if before then
        fields[#fields + 1] = 'v'
        fields[#fields + 1] = before
      end
      if ref ~= '' then
        fields[#fields + 1] = 'r'
        fields[#fields + 1] = ref
      end
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], id, unpack(fields))
    end
    previous[key] = id
  end
  for j = 1, m do
    redis.call('SET', KEYS[tonumber(ARGV[a + 5 + j])], id, 'NX', 'PX', ARGV[3])
  end
  a = a + 7 + m + k
end
-- Moves past event e without writing it; its answer is `id`.
local function skip(e, id)
  ids[e] = id
  local m = tonumber(ARGV[a + 5])
  a = a + 7 + m + tonumber(ARGV[a + 6 + m])
end
local e = 1
while e <= count do
  local g = keyed_at[e]
  if g == nil then
    write(e)
    e = e + 1
  else
    local events = tonumber(ARGV[9 + 4 * g])
    local record_key = KEYS[tonumber(ARGV[10 + 4 * g])]
    local fp = ARGV[11 + 4 * g]
    local record = redis.call('GET', record_key)
    if record and string.sub(record, 1, #fp) ~= fp then
      statuses[g] = 'c'
      for j = e, e + events - 1 do skip(j, '') end
    elseif record and #record > #fp then
      local recorded = {}
      for id in string.gmatch(string.sub(record, #fp + 2), '%S+') do
        recorded[#recorded + 1] = id
      end
      if #recorded == events then
        statuses[g] = 'r'
        -- A write, so a WAIT after this call covers the first publish's writes too.
        redis.call('SET', record_key, record, 'KEEPTTL')
        for j = 1, events do skip(e + j - 1, recorded[j]) end
      else
        -- Not the drafts it recorded: refused, never answered with holes.
        statuses[g] = 'c'
        for j = e, e + events - 1 do skip(j, '') end
      end
    else
      statuses[g] = 'p'
      for j = e, e + events - 1 do write(j) end
      redis.call('SET', record_key, fp .. ' ' .. table.concat(ids, ' ', e, e + events - 1),
        'PX', window)
    end
    e = e + events
  end
end
redis.call('SET', KEYS[2], n)
for i = 3, last_plain_key do
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
if G > 0 then
  ids[count + 1] = table.concat(statuses)
end
return ids
"""

BIND_KEY_SCRIPT = """
local record = redis.call('GET', KEYS[1])
if record then
  return string.sub(record, 1, #ARGV[1]) == ARGV[1] and 1 or 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
"""Binds a key to a fingerprint before a keyed publish on ``redis+cluster://`` (its record
keys live on the shards of its events, and this one on the key's own shard): 1 when the
key is free or bound to this fingerprint, 0 when bound to another. KEYS: the record key;
ARGV: the fingerprint (hex), the window (ms)."""


def publish_arguments(
    log_key: str,
    counter_key: str,
    sizes: tuple[int, int, int],
    parts: Iterable[tuple[Draft, Sequence[str], Sequence[str], str]],
    floor: tuple[int, int, int, int] = (1, 0, 0, 0),
    keyed: Sequence[KeyedRun] = (),
    window_ms: int = 0,
) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of one ``PUBLISH_SCRIPT`` call. ``sizes``: log size, history
    size, channel TTL (ms). Each part: a draft, the keys of the channel streams this call
    writes it to, its alias keys (a supplied id's, a reference token's) and its reference
    token ('' for an event of this log). ``floor``: shard count, shard, and the position
    the first event must be above ((0, 0): none). ``keyed``: the keyed publishes among the
    parts, recorded for ``window_ms``."""
    keys: list[Any] = [log_key, counter_key]
    index: dict[str, int] = {}
    args: list[Any] = [*sizes, 0, *floor, window_ms, 0, len(keyed)]
    args += [0] * (4 * len(keyed))  # each keyed publish's four, once KEYS is known
    count = 0
    for draft, channel_keys, alias_keys, reference in parts:
        args += [CHANNEL_SEPARATOR.join(draft.channels), draft.body, flag(draft)]
        args += [draft.event_id or "", reference, len(alias_keys)]
        args += [_key_index(key, keys, index) for key in alias_keys]
        args.append(len(channel_keys))
        args += [_key_index(key, keys, index) for key in channel_keys]
        count += 1
    args[3] = count
    args[9] = len(keys)  # the keys refreshed with the channel TTL: all but the record keys
    for g, run in enumerate(keyed):
        record = _key_index(run.record_key, keys, index)
        args[11 + 4 * g : 15 + 4 * g] = [run.first + 1, run.count, record, run.fingerprint]
    return keys, args


def split_reply(reply: list[bytes], keyed: int) -> tuple[list[bytes], bytes]:
    """A ``PUBLISH_SCRIPT`` reply's entry ids, and its statuses (a byte per keyed publish:
    ``REPLAYED``, ``CONFLICTING``, or ``p`` for published) when the call had ``keyed``."""
    if not keyed:
        return reply, b""
    return reply[:-1], reply[-1]


def _key_index(key: str, keys: list[Any], index: dict[str, int]) -> int:
    """``key``'s place in the script's KEYS (Lua counts from 1), added once."""
    position = index.get(key)
    if position is None:
        keys.append(key)
        position = index[key] = len(keys)
    return position
