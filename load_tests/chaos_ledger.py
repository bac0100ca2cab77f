"""The chaos test's accounting: what was acknowledged, what each subscriber saw, what went wrong.

Pure bookkeeping, no I/O, so every counter can be checked on synthetic input
(``tests/load_tests/test_chaos_ledger.py``). ``load_tests/chaos.py`` feeds it.

Definitions (made exact; read before changing a counter):

1. An event is ``(channel, id)``, not the id alone: the code the test is meant
   to judge can give events of two channels the same id, and those are two
   events, each of which may be lost on its own.
2. Ids are ``<ms>-<seq>`` (documented in ``app/wire/event_id.py``) and compare
   as integer pairs. This module parses them itself rather than with the
   product's parser: the instrument must not share the code it judges. An id
   that does not parse is counted (``bad_ids``) and fails the run.
3. A subscriber's starting cursor is the first id it sees, on any frame: an
   event, an ``id:`` line without data, a ``reset``. It is *expected* to
   receive every acknowledged event of its channels whose id is greater — and,
   since item 4 of the issue promises that a client holding its first frames
   gets everything published afterwards, also every acknowledged event whose
   publish request was written after the subscriber first held a response's
   first body bytes (``opened_at``). Without that second rule a client cut
   before its first event, which today resumes with no id at all, would lose
   events unseen.
4. Lost: expected, never received by the end. Duplicated: every reception of
   an event beyond its first. Out of order: a first reception on a channel
   after an event of that channel with a greater id (a repeat is counted as a
   duplicate only, so one fault is not counted twice).
5. Resets: ``event: reset`` frames received. Misrouted: an event of a channel
   the subscriber did not ask for. Mismatched: ``(channel, id)`` received with a
   payload other than the one acknowledged under it (an id collision on one
   channel). Id collisions: two acknowledgements with the same event.
6. Delivered but never acknowledged: distinct events someone received whose
   publish got no 202 (the answer was lost at a fault). Not an error: the
   publisher saw a failure and would retry.
7. Published twice: one publish (publisher, sequence number) that reached a channel
   under more than one id, as received by any subscriber or acknowledged. A publisher
   that retries with its idempotency key must never cause one: a retry the server
   took for a new publish would. Each id beyond the first counts once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Ack",
    "EventKey",
    "EventRef",
    "Ledger",
    "Origin",
    "SubscriberRecord",
    "Verdict",
    "format_key",
    "parse_key",
]

EventKey = tuple[int, int]
EventRef = tuple[str, EventKey]
"""One event: its channel and its id as an integer pair."""
Origin = tuple[int, int]
"""Which publish produced an event: (publisher index, its sequence number)."""

MAX_EXAMPLES = 8


def parse_key(raw: str) -> EventKey | None:
    """``"1796150510076-3"`` → ``(1796150510076, 3)``; None for anything else."""
    ms, dash, seq = raw.partition("-")
    if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    return int(ms), int(seq)


def format_key(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"


@dataclass(frozen=True, slots=True)
class Ack:
    """A publish answered 202: which event it made, when it was written and answered."""

    ref: EventRef
    origin: Origin
    sent_at: float
    acked_at: float


class SubscriberRecord:
    """What one subscriber saw, across all its streams."""

    def __init__(self, name: str, channels: frozenset[str]) -> None:
        self.name = name
        self.channels = channels
        self.start: EventKey | None = None
        self.cursor: EventKey | None = None
        """The last id that took effect: where this subscriber would resume now."""
        self.opened_at: float | None = None
        self.received: dict[EventRef, Origin] = {}
        self.receptions: Counter[EventRef] = Counter()
        self.newest: dict[str, EventKey] = {}
        self.duplicates: list[EventRef] = []
        self.out_of_order: list[tuple[EventRef, EventKey]] = []
        self.deliveries = 0
        self.resets = 0
        self.misrouted = 0
        self.bad_ids = 0
        self.malformed = 0

    def saw_id(self, raw: str) -> None:
        """An id took effect (dispatched, with or without data); the first one starts it."""
        key = parse_key(raw)
        if key is None:
            self.bad_ids += 1
            return
        self.cursor = key
        if self.start is None:
            self.start = key

    def opened(self, at: float) -> None:
        """A response's first body bytes arrived; only the first time counts."""
        if self.opened_at is None:
            self.opened_at = at

    def reset(self) -> None:
        self.resets += 1

    def delivered(self, channel: str, raw_id: str, origin: Origin) -> None:
        self.deliveries += 1
        key = parse_key(raw_id)
        if key is None:
            self.bad_ids += 1
            return
        if channel not in self.channels:
            self.misrouted += 1
        ref = (channel, key)
        self.receptions[ref] += 1
        if self.receptions[ref] > 1:
            self.duplicates.append(ref)
            return
        self.received[ref] = origin
        newest = self.newest.get(channel)
        if newest is not None and key < newest:
            self.out_of_order.append((ref, newest))
        else:
            self.newest[channel] = key


def _per_channel(refs: list[EventRef], channels: list[str]) -> dict[str, int]:
    counts = Counter(channel for channel, _ in refs)
    return {channel: counts[channel] for channel in channels}


@dataclass(slots=True)
class Verdict:
    """The figures a run is judged by; ``failures`` names every one that is not zero."""

    channels: list[str]
    lost: dict[str, int]
    duplicated: dict[str, int]
    out_of_order: dict[str, int]
    resets: int
    misrouted: int
    mismatched: int
    id_collisions: int
    bad_ids: int
    malformed: int
    delivered_never_acked: int
    deliveries: int
    published_twice: int
    lost_before_first_id: int
    """Lost events expected only by the ``opened_at`` rule (definition 3)."""
    lost_ahead_of_cursor: int
    """Lost events newer than where the subscriber would resume: it was still behind (or
    could not reconnect) when the run ended. The others it has passed for good."""
    examples: dict[str, list[str]] = field(default_factory=dict)

    def _errors(self) -> dict[str, int]:
        return {
            "lost": sum(self.lost.values()),
            "duplicated": sum(self.duplicated.values()),
            "published_twice": self.published_twice,
            "out_of_order": sum(self.out_of_order.values()),
            "resets": self.resets,
            "misrouted": self.misrouted,
            "mismatched": self.mismatched,
            "id_collisions": self.id_collisions,
            "bad_ids": self.bad_ids,
            "malformed": self.malformed,
        }

    @property
    def failures(self) -> dict[str, int]:
        return {name: count for name, count in self._errors().items() if count}

    def as_dict(self) -> dict[str, Any]:
        return {
            **self._errors(),
            "lost_per_channel": self.lost,
            "lost_before_first_id": self.lost_before_first_id,
            "lost_ahead_of_cursor": self.lost_ahead_of_cursor,
            "duplicated_per_channel": self.duplicated,
            "out_of_order_per_channel": self.out_of_order,
            "delivered_never_acked": self.delivered_never_acked,
            "deliveries": self.deliveries,
            "failures": self.failures,
            "examples": self.examples,
        }


class Ledger:
    """Every acknowledgement and every subscriber's record of one run."""

    def __init__(self, channels: list[str]) -> None:
        self.channels = channels
        self.acks: dict[EventRef, Ack] = {}
        self.answered = 0
        """Publishes answered 202 with an id, colliding or unparseable ones included."""
        self.id_collisions = 0
        self.bad_acks = 0
        self.subscribers: list[SubscriberRecord] = []

    def subscriber(self, name: str, channels: frozenset[str]) -> SubscriberRecord:
        record = SubscriberRecord(name, channels)
        self.subscribers.append(record)
        return record

    def ack(
        self, channel: str, raw_id: str, origin: Origin, sent_at: float, acked_at: float
    ) -> None:
        self.answered += 1
        key = parse_key(raw_id)
        if key is None:
            self.bad_acks += 1
            return
        ref = (channel, key)
        if ref in self.acks:
            self.id_collisions += 1
            return
        self.acks[ref] = Ack(ref, origin, sent_at, acked_at)

    def acked_after(self, moment: float) -> int:
        return sum(1 for ack in self.acks.values() if ack.acked_at > moment)

    def expected(self, record: SubscriberRecord) -> set[EventRef]:
        """The acknowledged events ``record`` must receive (definition 3)."""
        start, opened_at = record.start, record.opened_at
        if start is None and opened_at is None:
            return set()
        return {
            ack.ref
            for ack in self.acks.values()
            if ack.ref[0] in record.channels
            and (
                (start is not None and ack.ref[1] > start)
                or (opened_at is not None and ack.sent_at > opened_at)
            )
        }

    def missing(self, record: SubscriberRecord) -> set[EventRef]:
        return self.expected(record) - record.received.keys()

    def caught_up(self) -> bool:
        return all(not self.missing(record) for record in self.subscribers)

    def verdict(self) -> Verdict:
        lost: list[EventRef] = []
        duplicated: list[EventRef] = []
        out_of_order: list[EventRef] = []
        examples: dict[str, list[str]] = {
            "lost": [],
            "duplicated": [],
            "published_twice": [],
            "out_of_order": [],
        }
        delivered: set[EventRef] = set()
        ids_of: dict[tuple[str, Origin], set[EventKey]] = {}
        for acked in self.acks.values():
            ids_of.setdefault((acked.ref[0], acked.origin), set()).add(acked.ref[1])
        lost_before_first_id = lost_ahead_of_cursor = mismatched = 0
        for record in self.subscribers:
            missing = sorted(self.missing(record), key=lambda ref: ref[1])
            lost.extend(missing)
            for _, key in missing:
                if record.start is None or key <= record.start:
                    lost_before_first_id += 1
                if record.cursor is None or key > record.cursor:
                    lost_ahead_of_cursor += 1
            where = f"{record.name} on {','.join(sorted(record.channels))}"
            start = format_key(record.start) if record.start else "none"
            for channel, key in missing[: MAX_EXAMPLES - len(examples["lost"])]:
                examples["lost"].append(f"{channel} {format_key(key)} ({where}, start {start})")
            duplicated.extend(record.duplicates)
            for channel, key in record.duplicates[: MAX_EXAMPLES - len(examples["duplicated"])]:
                examples["duplicated"].append(f"{channel} {format_key(key)} ({where})")
            out_of_order.extend(ref for ref, _ in record.out_of_order)
            for (channel, key), newest in record.out_of_order[
                : MAX_EXAMPLES - len(examples["out_of_order"])
            ]:
                examples["out_of_order"].append(
                    f"{channel} {format_key(key)} after {format_key(newest)} ({where})"
                )
            for ref, origin in record.received.items():
                delivered.add(ref)
                ids_of.setdefault((ref[0], origin), set()).add(ref[1])
                ack = self.acks.get(ref)
                if ack is not None and ack.origin != origin:
                    mismatched += 1
        published_twice = 0
        for (channel, origin), keys in ids_of.items():
            published_twice += len(keys) - 1
            if len(keys) > 1 and len(examples["published_twice"]) < MAX_EXAMPLES:
                named = ", ".join(format_key(key) for key in sorted(keys))
                examples["published_twice"].append(f"{channel} {origin} as {named}")
        return Verdict(
            channels=self.channels,
            lost=_per_channel(lost, self.channels),
            duplicated=_per_channel(duplicated, self.channels),
            out_of_order=_per_channel(out_of_order, self.channels),
            resets=sum(record.resets for record in self.subscribers),
            misrouted=sum(record.misrouted for record in self.subscribers),
            mismatched=mismatched,
            id_collisions=self.id_collisions,
            bad_ids=self.bad_acks + sum(record.bad_ids for record in self.subscribers),
            malformed=sum(record.malformed for record in self.subscribers),
            delivered_never_acked=len(delivered - self.acks.keys()),
            deliveries=sum(record.deliveries for record in self.subscribers),
            published_twice=published_twice,
            lost_before_first_id=lost_before_first_id,
            lost_ahead_of_cursor=lost_ahead_of_cursor,
            examples={name: found for name, found in examples.items() if found},
        )
