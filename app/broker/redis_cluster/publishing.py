"""Publishing on ``redis+cluster://``: each shard's part of a call in one script call,
acknowledged once replicas have it, and an event on channels of several shards written
once, with references on the others.

Design decisions (read before changing):

1. **Durability.** After each shard's script, ``WAIT <REDIS_CLUSTER_WAIT_REPLICAS>
   <timeout>`` in the same pipeline (one round trip, on the connection that wrote:
   WAIT counts the replication of that connection's writes, which is also why the
   broker routes its own commands instead of using redis-py's ``RedisCluster``, whose
   keyless WAIT would go to any node; ``nodes`` reads ``CLUSTER SLOTS`` itself). Fewer
   replicas → not acknowledged (503). Readers read replicas for the same reason
   (``merge``).
2. **Multi-shard events: one event, one id.** An event whose channels span shards is
   written once, on its home shard (its first channel's): its log entry, its home
   channels' streams, and a reference key ``…:ref:<token>`` → its entry id. *Before*
   that, each other shard involved gets a reference: an entry in each of its channels'
   streams carrying the token (``r``), with a tick in its log so channel ids stay log
   ids. Live, every worker delivers the home log entry, once. A replay of a channel
   finds references in its stream and looks the token up on the home shard. So: one
   id for every subscriber, the publisher's answer included; a copy per shard would
   either land behind heads already handed out or give one event several ids. Cost:
   two round trips for a multi-shard publish. A publish is acknowledged only when
   every part succeeded; no all-or-nothing across shards exists, so a failed one (503)
   may have landed (references alone are never delivered).
3. **A worker's publishes keep their order across shards**: each call's first event
   is placed above the newest position the worker was answered (the floor of
   ``PUBLISH_SCRIPT``), so a client that publishes A, then B once A is answered, has
   every stream see A first. Across workers, and within one call (a batch spanning
   shards), events follow their positions (one order for every stream: the master
   clocks, ticks ``TICK_AHEAD_MS`` ahead, a shard's place in the millisecond), not the
   request.
4. **A home entry lies above its references.** After a multi-shard publish's
   references are written, the worker's floor is raised to their positions, so the
   home entries of that call go above them. A channel stream's entries then name
   events at or after their own position, which a paged replay's bound needs
   (``replay``); without it, a master whose clock lags would place an event below a
   reference already passed.
5. A publish whose connection failed is not retried (it may have run): 503.
6. **Keyed publishes** (``app.broker.idempotency``). A key's record cannot live with
   every event of its request: a batch's events have their home on several shards, and
   no script spans shards. So each home shard keeps the record of its part,
   ``{<shard>}:idem:<key>``, checked and written by the script that numbers that part:
   a part is written once, whichever of two racing requests gets there first, and both
   are answered with its ids. Which shards a request touches depends on its events, so
   before publishing, the key is *bound* to the request's fingerprint on one shard
   chosen by the key alone (``crc32(key) mod S``, ``BIND_KEY_SCRIPT``): a key reused
   with other events is refused there, before anything is written, wherever those
   events would go. The bound record is the home record when the request's events all
   live on that shard, and then no binding call is made; otherwise it costs one round
   trip. A keyed request's part on a shard is written whole or not at all (an event
   whose references failed holds back the request's whole part), so its record there
   always answers for the same drafts. A retry of a request that failed on one shard
   completes it: its parts already written answer from their records, the missing part
   is written. Two racing requests
   whose events span shards may each write some parts; each part is still written once
   and both get the same ids, but neither is then told it was a replay. A replayed
   event on several shards leaves its fresh references behind, unresolved and so never
   delivered (note 2).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import RedisError

from app.broker.base import BrokerUnavailableError, Draft, Published, PublishKey
from app.broker.publish_queue import CallKey, CallResult
from app.broker.publish_script import (
    BIND_KEY_SCRIPT,
    CONFLICTING,
    PUBLISH_SCRIPT,
    REPLAYED,
    KeyedRun,
    publish_arguments,
    split_reply,
)
from app.broker.redis_cluster.shards import UNAVAILABLE, Shard, ShardedBroker
from app.broker.redis_entries import draft_fields, entry_event
from app.wire.event import Event

__all__ = ["REFERENCE_WINDOW_MS", "REFERENCE_WRITE_SECONDS", "ClusterPublishing"]

logger = logging.getLogger("herald.broker")

# A multi-shard event's home entry is written at most this long after its references
# (else the publish fails), and replays read channel streams this much further back to
# find references whose event is after the cursor (``replay``).
REFERENCE_WRITE_SECONDS = 10.0
REFERENCE_WINDOW_MS = 15_000
PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()
BIND_KEY_SHA = hashlib.sha1(BIND_KEY_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Part:
    """One draft in one shard's script call."""

    index: int
    draft: Draft
    channel_keys: list[str]
    aliases: list[str]
    reference: str  # '<home shard>:<token>' for a reference, '' for the event itself


class ClusterPublishing(ShardedBroker):
    """``publish``: the calls of the publish queue, written shard by shard."""

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        if not drafts:
            return []
        if self._closing or self._listener is None:
            raise BrokerUnavailableError(UNAVAILABLE)
        return self._events(await self._publishing.publish(drafts), drafts)

    async def publish_once(self, drafts: Sequence[Draft], key: PublishKey) -> Published:
        if self._closing or self._listener is None:
            raise BrokerUnavailableError(UNAVAILABLE)
        entry_ids, replayed = await self._publishing.publish_once(drafts, key)
        return Published(self._events(entry_ids, drafts), replayed)

    def _events(self, entry_ids: list[bytes], drafts: Sequence[Draft]) -> list[Event]:
        events = []
        for entry_id, draft in zip(entry_ids, drafts, strict=True):
            home = self.shard_of(draft.channels[0])
            key = self.position(home, entry_id)
            events.append(entry_event(entry_id, draft.channels, draft_fields(draft), key))
        return events

    def record_key(self, shard: int, key: str) -> str:
        """Where shard ``shard`` keeps a keyed publish's record (note 6)."""
        return f"{self.shards[shard].tag}:idem:{key}"

    def shard_parts(
        self, drafts: Sequence[Draft]
    ) -> tuple[dict[int, list[_Part]], dict[int, list[_Part]]]:
        """Each shard's part of a call, in request order: the events whose home it is
        (first channel's shard), and the references to events homed elsewhere (note 2)."""
        homes: dict[int, list[_Part]] = {}
        references: dict[int, list[_Part]] = {}
        for index, draft in enumerate(drafts):
            by_shard: dict[int, list[str]] = {}
            for channel in draft.channels:
                by_shard.setdefault(self.shard_of(channel), []).append(self.key(channel))
            home = self.shard_of(draft.channels[0])
            token = uuid.uuid4().hex if len(by_shard) > 1 else ""
            aliases = [self.supplied_id_key(home, draft.event_id)] if draft.event_id else []
            if token:
                aliases.append(self.reference_key(home, token))
                for k, keys in by_shard.items():
                    if k != home:
                        part = _Part(index, draft, keys, [], f"{home}:{token}")
                        references.setdefault(k, []).append(part)
            homes.setdefault(home, []).append(_Part(index, draft, by_shard[home], aliases, ""))
        return homes, references

    async def _write_call(self, drafts: list[Draft], keys: list[CallKey]) -> CallResult:
        """Keys bound first (note 6), then references, then the events on their home
        shards: each phase one round trip per shard involved, concurrently (note 2). The
        home entry ids in order, and the indexes of the drafts that failed, were replayed
        or conflict: a request is answered with its ids if every shard its events touch
        took its part, else 503, so a shard that fails fails only the requests that
        touch it."""
        homes, references = self.shard_parts(drafts)
        result = CallResult([b""] * len(drafts))
        keyed: dict[int, CallKey] = {}  # a keyed draft's index -> its request's key
        if keys:
            await self._bind_keys(keys, homes, result)
            for call_key in keys:
                request = range(call_key.first, call_key.first + call_key.count)
                if result.conflicting.isdisjoint(request) and result.failed.isdisjoint(request):
                    keyed.update(dict.fromkeys(request, call_key))
            skipped = result.conflicting | result.failed
            homes = _without(homes, skipped)
            references = _without(references, skipped)
        started = time.monotonic()
        if references:
            placed: dict[int, list[bytes]] = {}
            result.failed |= await self._all_shards(references, placed, {}, result)
            # Each event's home entry goes above its references (note 4).
            for k, entry_ids in placed.items():
                self._floor = max(self._floor, self.position(k, entry_ids[-1]))
            if time.monotonic() - started > REFERENCE_WRITE_SECONDS:
                # Replays look this far back for references (``replay``): too late to write.
                result.failed = set(range(len(drafts))) - result.conflicting
                return result
            # An event whose references did not all land is not written at home, nor is any
            # event of a keyed request that has one: each shard's record of a keyed request
            # holds all of its part there or nothing (note 6).
            for call_key in keys:
                request = range(call_key.first, call_key.first + call_key.count)
                if not result.failed.isdisjoint(request):
                    result.failed.update(request)
            homes = _without(homes, result.failed)
        written: dict[int, list[bytes]] = {}
        runs = {k: self._keyed_runs(k, part, keyed) for k, part in homes.items()}
        result.failed |= await self._all_shards(homes, written, runs, result)
        for k, entry_ids in written.items():
            for part, entry_id in zip(homes[k], entry_ids, strict=True):
                result.entry_ids[part.index] = entry_id
            # What this worker publishes next goes after this, on any shard (note 3). A
            # replayed or refused publish's ids are older, or none.
            positions = [self.position(k, entry_id) for entry_id in entry_ids if entry_id]
            self._floor = max([self._floor, *positions])
        return result

    async def _bind_keys(
        self, keys: list[CallKey], homes: dict[int, list[_Part]], result: CallResult
    ) -> None:
        """Bind each key to its request's fingerprint on the key's shard, unless every event
        of the request lives there (note 6). Marks the drafts of a key bound to another
        fingerprint ``conflicting`` and those whose binding failed ``failed``."""
        home_of = {p.index: k for k, part in homes.items() for p in part}
        binding: dict[int, list[CallKey]] = {}
        for call_key in keys:
            shard = self.shard_of(call_key.key.key)
            request = range(call_key.first, call_key.first + call_key.count)
            if any(home_of[i] != shard for i in request):
                binding.setdefault(shard, []).append(call_key)
        if not binding:
            return
        shards = list(binding)
        outcomes = await asyncio.gather(
            *(self._bind_on(k, binding[k]) for k in shards), return_exceptions=True
        )
        for k, outcome in zip(shards, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            for position, call_key in enumerate(binding[k]):
                request = range(call_key.first, call_key.first + call_key.count)
                if isinstance(outcome, BaseException):
                    result.failed.update(request)
                elif not int(outcome[position]):
                    result.conflicting.update(request)
            if isinstance(outcome, RedisError | OSError):
                self.nodes.refresh_soon()
            elif isinstance(outcome, BaseException) and not isinstance(
                outcome, BrokerUnavailableError
            ):
                logger.error("cluster key binding on shard %d failed: %r", k, outcome)

    async def _bind_on(self, shard: int, keys: list[CallKey]) -> list[Any]:
        commands: list[tuple[Any, ...]] = [
            (
                "EVALSHA",
                BIND_KEY_SHA,
                1,
                self.record_key(shard, call_key.key.key),
                call_key.key.fingerprint.hex(),
                self.idempotency_ms,
            )
            for call_key in keys
        ]
        return await self.nodes.on_master(
            self.shards[shard].slot, commands, (BIND_KEY_SHA, BIND_KEY_SCRIPT)
        )

    def _keyed_runs(
        self, shard: int, part: list[_Part], keyed: dict[int, CallKey]
    ) -> list[KeyedRun]:
        """The keyed requests' runs in ``shard``'s part (a request's drafts are contiguous in
        the call, so its drafts homed here are contiguous in the part)."""
        runs: list[KeyedRun] = []
        owner: CallKey | None = None
        for position, p in enumerate(part):
            call_key = keyed.get(p.index)
            if call_key is None:
                owner = None
                continue
            if call_key is owner:
                last = runs[-1]
                runs[-1] = KeyedRun(last.first, last.count + 1, last.record_key, last.fingerprint)
            else:
                owner = call_key
                key = call_key.key
                runs.append(
                    KeyedRun(position, 1, self.record_key(shard, key.key), key.fingerprint.hex())
                )
        return runs

    async def _all_shards(
        self,
        parts: dict[int, list[_Part]],
        written: dict[int, list[bytes]],
        runs: dict[int, list[KeyedRun]],
        result: CallResult,
    ) -> set[int]:
        """Every shard's part at once, the keyed ``runs`` among them; fills ``written`` with
        what succeeded, marks in ``result`` the drafts a key's record answered or refused,
        and returns the indexes of the drafts of the shards that failed."""
        shards = list(parts)
        results = await asyncio.gather(
            *(self._write_shard(self.shards[k], parts[k], runs.get(k, [])) for k in shards),
            return_exceptions=True,
        )
        failed: set[int] = set()
        for k, outcome in zip(shards, results, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                if isinstance(outcome, RedisError | OSError):
                    self.nodes.refresh_soon()
                elif not isinstance(outcome, BrokerUnavailableError):
                    logger.error("cluster publish on shard %d failed: %r", k, outcome)
                failed.update(p.index for p in parts[k])
            else:
                entry_ids, statuses = outcome
                written[k] = entry_ids
                for status, run in zip(statuses, runs.get(k, []), strict=True):
                    indexes = (p.index for p in parts[k][run.first : run.first + run.count])
                    if status == REPLAYED:
                        result.replayed.update(indexes)
                    elif status == CONFLICTING:
                        result.conflicting.update(indexes)
        return failed

    async def _write_shard(
        self, shard: Shard, part: list[_Part], runs: list[KeyedRun]
    ) -> tuple[list[bytes], bytes]:
        sizes = (self.log_size, self.history_size, self.channel_ttl_ms)
        keys, args = publish_arguments(
            shard.log_key,
            shard.counter_key,
            sizes,
            ((p.draft, p.channel_keys, p.aliases, p.reference) for p in part),
            (self.shard_count, shard.index, *self._floor),
            runs,
            self.idempotency_ms,
        )
        commands: list[tuple[Any, ...]] = [("EVALSHA", PUBLISH_SHA, len(keys), *keys, *args)]
        if self.wait_replicas:
            commands.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
        results = await self.nodes.on_master(shard.slot, commands, (PUBLISH_SHA, PUBLISH_SCRIPT))
        if self.wait_replicas and int(results[1]) < self.wait_replicas:
            # Written on the master only: a failover could lose it, so not acknowledged.
            raise BrokerUnavailableError(UNAVAILABLE)
        return split_reply(cast(list[bytes], results[0]), len(runs))


def _without(parts: dict[int, list[_Part]], indexes: set[int]) -> dict[int, list[_Part]]:
    """``parts`` without the drafts at ``indexes`` (and without the shards left empty)."""
    if not indexes:
        return parts
    kept = {k: [p for p in part if p.index not in indexes] for k, part in parts.items()}
    return {k: part for k, part in kept.items() if part}
