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

from app.broker.base import BrokerUnavailableError, Draft
from app.broker.publish_queue import CallResult
from app.broker.publish_script import PUBLISH_SCRIPT, publish_arguments
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
        entry_ids = await self._publishing.publish(drafts)
        events = []
        for entry_id, draft in zip(entry_ids, drafts, strict=True):
            home = self.shard_of(draft.channels[0])
            key = self.position(home, entry_id)
            events.append(entry_event(entry_id, draft.channels, draft_fields(draft), key))
        return events

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

    async def _write_call(self, drafts: list[Draft]) -> CallResult:
        """References first, then the events on their home shards: each phase one round
        trip per shard involved, concurrently (note 2). The home entry ids in order, and
        the indexes of the drafts that failed: a request is answered with its ids if every
        shard its events touch took its part, else 503, so a shard that fails fails only
        the requests that touch it."""
        homes, references = self.shard_parts(drafts)
        failed: set[int] = set()
        started = time.monotonic()
        if references:
            placed: dict[int, list[bytes]] = {}
            failed |= await self._all_shards(references, placed)
            # Each event's home entry goes above its references (note 4).
            for k, entry_ids in placed.items():
                self._floor = max(self._floor, self.position(k, entry_ids[-1]))
            if time.monotonic() - started > REFERENCE_WRITE_SECONDS:
                # Replays look this far back for references (``replay``): too late to write.
                return [b""] * len(drafts), set(range(len(drafts)))
            # An event whose references did not all land is not written at home.
            homes = {
                k: [p for p in part if p.index not in failed]
                for k, part in homes.items()
                if any(p.index not in failed for p in part)
            }
        written: dict[int, list[bytes]] = {}
        failed |= await self._all_shards(homes, written)
        home_ids: list[bytes] = [b""] * len(drafts)
        for k, entry_ids in written.items():
            for part, entry_id in zip(homes[k], entry_ids, strict=True):
                home_ids[part.index] = entry_id
            # What this worker publishes next goes after this, on any shard (note 3).
            self._floor = max(self._floor, self.position(k, entry_ids[-1]))
        return home_ids, failed

    async def _all_shards(
        self, parts: dict[int, list[_Part]], written: dict[int, list[bytes]]
    ) -> set[int]:
        """Every shard's part at once; fills ``written`` with what succeeded and returns the
        indexes of the drafts of the shards that failed."""
        shards = list(parts)
        results = await asyncio.gather(
            *(self._write_shard(self.shards[k], parts[k]) for k in shards),
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
                written[k] = outcome
        return failed

    async def _write_shard(self, shard: Shard, part: list[_Part]) -> list[bytes]:
        sizes = (self.log_size, self.history_size, self.channel_ttl_ms)
        keys, args = publish_arguments(
            shard.log_key,
            shard.counter_key,
            sizes,
            ((p.draft, p.channel_keys, p.aliases, p.reference) for p in part),
            (self.shard_count, shard.index, *self._floor),
        )
        commands: list[tuple[Any, ...]] = [("EVALSHA", PUBLISH_SHA, len(keys), *keys, *args)]
        if self.wait_replicas:
            commands.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
        results = await self.nodes.on_master(shard.slot, commands, (PUBLISH_SHA, PUBLISH_SCRIPT))
        if self.wait_replicas and int(results[1]) < self.wait_replicas:
            # Written on the master only: a failover could lose it, so not acknowledged.
            raise BrokerUnavailableError(UNAVAILABLE)
        return cast(list[bytes], results[0])
