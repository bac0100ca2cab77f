"""The stream entries both Redis brokers write and read: their fields, how an entry becomes
an ``Event``, and how a read tells that trimming took an entry a reader still needed.

A log entry has ``n`` (its number in its log), ``c`` (the event's channels,
newline-separated), ``b`` (body), ``p`` (private flag) and ``i`` (a publisher's own
id); a tick (``redis+cluster://``) is a log entry with ``t`` and ``n`` only, numbered
like the event before it. A channel entry has ``b``, ``p``, ``i``, ``v`` (the id of the
channel's previous entry), ``c`` only when the event has several channels, and ``r``
(a token) when it stands for an event written in another shard's log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.broker.base import Draft
from app.wire.encoding import encode_frame
from app.wire.event import Event
from app.wire.event_id import EventKey, format_event_id

__all__ = [
    "BODY_FIELD",
    "CHANNEL_FIELD",
    "CHANNEL_SEPARATOR",
    "NUMBER_FIELD",
    "PREVIOUS_FIELD",
    "PRIVATE_FIELD",
    "REFERENCE_FIELD",
    "SUPPLIED_ID_FIELD",
    "TICK_FIELD",
    "channel_lost",
    "channels_of",
    "draft_fields",
    "entry_event",
    "flag",
    "key_of",
    "log_lost",
]

BODY_FIELD = b"b"
PRIVATE_FIELD = b"p"  # b"1" on private events, absent on the others
PREVIOUS_FIELD = b"v"  # channel entries: the id of the channel's previous entry
SUPPLIED_ID_FIELD = b"i"  # the publisher's own id, shown instead of the entry id
REFERENCE_FIELD = b"r"  # channel entries referring to an event of another log (its token)
TICK_FIELD = b"t"  # log entries that are not events
CHANNEL_FIELD = b"c"  # log entries; channel entries only when the event has several
CHANNEL_SEPARATOR = "\n"  # no channel or Mercure topic may contain a control character
NUMBER_FIELD = b"n"  # log entries only


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


def draft_fields(draft: Draft) -> dict[bytes, bytes]:
    """The fields an event's stream entries have that ``entry_event`` reads, from its draft."""
    fields = {BODY_FIELD: draft.body, PRIVATE_FIELD: flag(draft)}
    if draft.event_id is not None:
        fields[SUPPLIED_ID_FIELD] = draft.event_id.encode()
    return fields


def flag(draft: Draft) -> bytes:
    return b"1" if draft.private else b""


def key_of(event_id: bytes | str) -> EventKey:
    # Redis entry ids are always <ms>-<seq>, two decimal integers: no validation needed, and
    # this runs for every event read or published.
    if isinstance(event_id, bytes):
        ms, _, seq = event_id.partition(b"-")
        return int(ms), int(seq)
    text_ms, _, text_seq = event_id.partition("-")
    return int(text_ms), int(text_seq)


def channel_lost(
    after: EventKey,
    exists: bool,
    entries: Sequence[Any],
    now_ms: int,
    ttl_ms: int,
    position: Callable[[bytes], EventKey] = key_of,
) -> bool:
    """Whether a channel's history may lack an event after ``after``: ``exists`` and
    ``entries`` are what a read of its stream from ``after`` on found, ``position`` turns an
    entry id of its log into a position. The oldest entry read names its predecessor
    (``v``): if that is newer than ``after``, trimming took it. The first entry of a stream
    (new, or re-created after it expired) names none; then, as for a missing stream, events
    can only have been missed by an id older than the channel TTL before it."""
    if not exists:  # never published, or expired: its events are older than the TTL
        return after[0] < now_ms - ttl_ms
    if not entries:  # everything kept is at or before `after`; trimmed ones are older
        return False
    first_id, fields = entries[0]
    previous = fields.get(PREVIOUS_FIELD)
    if previous is not None:
        return position(previous) > after
    return after[0] < key_of(first_id)[0] - ttl_ms


def log_lost(
    after: EventKey, first_entry: Any, position: Callable[[bytes], EventKey] = key_of
) -> bool:
    """Whether a log (trimmed to ``REDIS_LOG_SIZE``) may lack an event after ``after``: its
    oldest entry (``first_entry``, None for an empty log) is newer than ``after`` and some
    event came before it."""
    if not first_entry:
        return False
    entry_id, fields = first_entry
    number = int(fields.get(NUMBER_FIELD, 1))
    before = number if TICK_FIELD in fields else number - 1  # events older than it
    return position(entry_id) > after and before > 0
