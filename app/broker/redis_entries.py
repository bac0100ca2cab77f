"""What the Redis brokers share: the stream entry layout, the publish script, decoding,
timeouts and backoff (``app.broker.redis`` on one Redis, ``app.broker.redis_cluster`` on
a Redis Cluster, where each log shard runs the same script on its own keys).

Entry layout: a log entry has ``n`` (its number in its log), ``c`` (the event's
channels, newline-separated), ``b`` (body), ``p`` (private flag) and ``i`` (a
publisher's own id); a channel entry has ``b``, ``p``, ``i``, ``v`` (the id of the
channel's previous entry) and ``c`` only when the event has several channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.broker.base import Draft
from app.sse.encoding import encode_frame
from app.sse.event import Event
from app.sse.event_id import EventKey, format_event_id

__all__ = [
    "BACKOFF_INITIAL_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "BODY_FIELD",
    "CHANNEL_FIELD",
    "CHANNEL_SEPARATOR",
    "COMMAND_TIMEOUT_SECONDS",
    "CONNECT_TIMEOUT_SECONDS",
    "NUMBER_FIELD",
    "PREVIOUS_FIELD",
    "PRIVATE_FIELD",
    "PUBLISH_CALLS_IN_FLIGHT",
    "PUBLISH_CALL_EVENTS",
    "PUBLISH_SCRIPT",
    "READER_SOCKET_TIMEOUT_SECONDS",
    "READER_STOP_SECONDS",
    "READ_BLOCK_MS",
    "READ_COUNT",
    "REFERENCE_FIELD",
    "SUPPLIED_ID_FIELD",
    "TICK_FIELD",
    "UNAVAILABLE",
    "LocalInterest",
    "PendingPublish",
    "channels_of",
    "draft_fields",
    "entry_event",
    "flag",
    "key_of",
    "next_call",
    "publish_arguments",
    "redact_url",
]

READ_BLOCK_MS = 5000
READ_COUNT = 1000
CONNECT_TIMEOUT_SECONDS = 5.0
# Longer than the block: a quiet XREAD BLOCK must not look like a dead socket.
READER_SOCKET_TIMEOUT_SECONDS = READ_BLOCK_MS / 1000 + 10
COMMAND_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_CONNECTIONS = 32
"""Command connections per worker (per node on a cluster): REDIS_MAX_CONNECTIONS."""
BACKOFF_INITIAL_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0
# Python 3.11's asyncio.wait_for (used by redis-py around socket I/O) can swallow a
# cancellation that lands as the I/O completes (CPython gh-86296): so stopping the
# reader is a flag it checks plus a bounded wait, never an unbounded await.
READER_STOP_SECONDS = 2.0
BODY_FIELD = b"b"
PRIVATE_FIELD = b"p"  # b"1" on private events, absent on the others
PREVIOUS_FIELD = b"v"  # channel entries: the id of the channel's previous entry
SUPPLIED_ID_FIELD = b"i"  # the publisher's own id, shown instead of the entry id
REFERENCE_FIELD = b"r"  # channel entries referring to an event of another log (its token)
TICK_FIELD = b"t"  # log entries that are not events
CHANNEL_FIELD = b"c"  # log entries; channel entries only when the event has several
CHANNEL_SEPARATOR = "\n"  # no channel or Mercure topic may contain a control character
PUBLISH_CALL_EVENTS = 1000
# Two calls in flight: while one waits for Redis, the next gathers what arrived meanwhile
# (measured: 1 leaves requests waiting behind the call in flight; 4 makes calls smaller).
PUBLISH_CALLS_IN_FLIGHT = 2
NUMBER_FIELD = b"n"  # log entries only
UNAVAILABLE = "the event backplane (Redis) is unavailable; retry later"

# KEYS: log, counter, then every channel stream of the call and every alias key (each
# once). ARGV: log size, history size, channel TTL (ms), event count, shard count S, this
# log's shard k, and a floor position (ms, seq; 0 0 for none): the call's first event gets
# an entry id whose position (ms, n*S + k) is above it (``redis+cluster://`` keeps a
# worker's publishes in order across shards so), then per event: its
# channel names (the log's channel field), body, private flag, the publisher's own id (''
# for none), a reference token ('' for none), alias count m and m indexes into KEYS,
# channel count k and k indexes into KEYS. An alias key (a supplied id's, a reference
# token's) maps to the event's entry id, set only by the first event that carries it and
# expiring with the channel TTL. An event with a reference token is not an event of this
# log but a *reference* to one written elsewhere (``redis+cluster://``): its channel
# entries carry the token (``r``), and the log gets a tick (``t``, numbered like the
# event before it) whose id they share, so channel ids stay log ids.
# Returns the entry ids in order. `previous` remembers each stream's newest entry, so a
# call of many events on one channel reads it once.
PUBLISH_SCRIPT = """
local count = tonumber(ARGV[4])
local S, shard = tonumber(ARGV[5]), tonumber(ARGV[6])
local floor_ms, floor_seq = tonumber(ARGV[7]), tonumber(ARGV[8])
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
local previous = {}
local ids = {}
local a = 9
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
for e = 1, count do
  local names, body, private, supplied = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local ref = ARGV[a + 4]
  local m = tonumber(ARGV[a + 5])
  local k = tonumber(ARGV[a + 6 + m])
  -- The usual event (public, no supplied id, not a reference): its fields spelled out,
  -- no table built and unpacked, no empty private flag (Redis CPU per event 16 -> 13 us).
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
redis.call('SET', KEYS[2], n)
for i = 3, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return ids
"""


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def entry_event(
    entry_id: bytes,
    channels: tuple[str, ...],
    fields: dict[bytes, bytes],
    key: EventKey | None = None,
) -> Event:
    """A stream entry as an Event: its position is ``key`` (the entry id by default) and
    its id, unless the publisher supplied one, the position."""
    position = key_of(entry_id) if key is None else key
    supplied = fields.get(SUPPLIED_ID_FIELD)
    if supplied:
        event_id = supplied.decode()
    elif key is None:
        event_id = entry_id.decode()
    else:
        event_id = format_event_id(key)
    body = fields.get(BODY_FIELD, b"")
    private = fields.get(PRIVATE_FIELD) == b"1"
    return Event(position, event_id, channels, encode_frame(event_id, body), private)


def channels_of(raw: bytes) -> tuple[str, ...]:
    return tuple(raw.decode().split(CHANNEL_SEPARATOR))


class PendingPublish:
    """One ``publish`` call waiting for the flusher: its drafts and who awaits their ids."""

    __slots__ = ("drafts", "future")

    def __init__(self, drafts: Sequence[Draft], future: asyncio.Future[list[bytes]]) -> None:
        self.drafts = drafts
        self.future = future


def draft_fields(draft: Draft) -> dict[bytes, bytes]:
    """The fields an event's stream entries have that ``_event`` reads, from its draft."""
    fields = {BODY_FIELD: draft.body, PRIVATE_FIELD: flag(draft)}
    if draft.event_id is not None:
        fields[SUPPLIED_ID_FIELD] = draft.event_id.encode()
    return fields


def flag(draft: Draft) -> bytes:
    return b"1" if draft.private else b""


def key_of(event_id: bytes | str) -> EventKey:
    # Redis entry ids are always <ms>-<seq>, two decimal integers: no validation needed, and
    # this runs for every event read or published (parse_event_id cost 7 % of a batch).
    if isinstance(event_id, bytes):
        ms, _, seq = event_id.partition(b"-")
        return int(ms), int(seq)
    text_ms, _, text_seq = event_id.partition("-")
    return int(text_ms), int(text_seq)


def publish_arguments(
    log_key: str,
    counter_key: str,
    sizes: tuple[int, int, int],
    parts: Iterable[tuple[Draft, Sequence[str], Sequence[str], str]],
    floor: tuple[int, int, int, int] = (1, 0, 0, 0),
) -> tuple[list[Any], list[Any]]:
    """The keys and arguments of one ``PUBLISH_SCRIPT`` call. ``sizes``: log size, history
    size, channel TTL (ms). Each part: a draft, the keys of the channel streams this call
    writes it to, its alias keys (a supplied id's, a reference token's) and its reference
    token ('' for an event of this log). ``floor``: shard count, shard, and the position
    the first event must be above ((0, 0): none)."""
    keys: list[Any] = [log_key, counter_key]
    index: dict[str, int] = {}
    args: list[Any] = [*sizes, 0, *floor]
    count = 0
    for draft, channel_keys, alias_keys, reference in parts:
        args += [CHANNEL_SEPARATOR.join(draft.channels), draft.body, flag(draft)]
        args += [draft.event_id or "", reference, len(alias_keys)]
        args += [_key_index(key, keys, index) for key in alias_keys]
        args.append(len(channel_keys))
        args += [_key_index(key, keys, index) for key in channel_keys]
        count += 1
    args[3] = count
    return keys, args


def _key_index(key: str, keys: list[Any], index: dict[str, int]) -> int:
    """``key``'s place in the script's KEYS (Lua counts from 1), added once."""
    position = index.get(key)
    if position is None:
        keys.append(key)
        position = index[key] = len(keys)
    return position


def next_call(pending: Sequence[PendingPublish]) -> int:
    """How many of the queued publishes the next script call carries: up to
    ``PUBLISH_CALL_EVENTS`` events, or one publish that alone has more."""
    taken, events = 0, 0
    for waiting in pending:
        if taken and events + len(waiting.drafts) > PUBLISH_CALL_EVENTS:
            break
        taken += 1
        events += len(waiting.drafts)
    return taken


class LocalInterest:
    """The channels this process has local subscribers on, counted (subscribing is local:
    the readers read every event and keep those that have interest)."""

    def __init__(self) -> None:
        self._interest: dict[str, int] = {}
        # Local subscribers that may want any channel (patterns): the readers keep all.
        self._every_channel = 0

    async def subscribe(self, channel: str) -> None:
        self._interest[channel] = self._interest.get(channel, 0) + 1

    async def unsubscribe(self, channel: str) -> None:
        count = self._interest.get(channel, 0) - 1
        if count > 0:
            self._interest[channel] = count
        else:
            self._interest.pop(channel, None)

    async def watch_every_channel(self) -> None:
        self._every_channel += 1

    async def unwatch_every_channel(self) -> None:
        self._every_channel = max(0, self._every_channel - 1)
