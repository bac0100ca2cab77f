"""What the two Redis brokers (``app.broker.redis``, ``app.broker.redis_cluster``) share:
their settings, their state and counters, the channels this process has subscribers on,
the publish queue, and how a failure is reported.

Subscribing is local: the readers read every event and keep the ones a local
subscriber wants, so ``subscribe`` only counts. Unreachable Redis is a state, not a
crash: ``state`` is "down" from the first failure (logged once) until a reader reads
again. History lives in Redis, which expires idle channel streams itself (``PEXPIRE``
on every publish), so the reaper's ``sweep`` and the memory guard's ``trim_history``
have nothing to do in this process.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Any, Required, TypedDict, cast

import redis.asyncio as aioredis

from app.broker.base import Broker, Draft, EventListener, ResyncListener
from app.broker.capabilities import BrokerHealth
from app.broker.pages import RecentLargest
from app.broker.publish_queue import CallKey, CallResult, PublishQueue
from app.broker.redis_connections import DEFAULT_MAX_CONNECTIONS, READ_COUNT
from app.broker.redis_entries import BODY_FIELD, CHANNEL_FIELD, channels_of, entry_event
from app.wire.event_id import MAX_EVENT_ID_LENGTH, EventKey

__all__ = ["DEFAULT_KEY_PREFIX", "DEFAULT_LOG_SIZE", "RedisBrokerBase", "RedisOptions"]

logger = logging.getLogger("herald.broker")

DEFAULT_KEY_PREFIX = "herald"
DEFAULT_LOG_SIZE = 10_000
DEFAULT_IDEMPOTENCY_SECONDS = 300.0
DEFAULT_MAX_EVENT_BYTES = 65_536
# A frame is its body plus the id line and the blank line that dispatches it.
FRAME_OVERHEAD_BYTES = MAX_EVENT_ID_LENGTH + 6


class RedisOptions(TypedDict, total=False):
    """The settings both Redis brokers take, by keyword (``app.broker.create_broker`` reads
    them from ``SSE_HISTORY_SIZE``, ``SSE_CHANNEL_TTL_SECONDS`` and ``REDIS_*``)."""

    history_size: Required[int]
    channel_ttl_seconds: Required[float]
    key_prefix: str
    log_size: int
    max_connections: int
    idempotency_seconds: float
    max_event_bytes: int


class RedisBrokerBase(Broker, BrokerHealth):
    """A Redis broker's shared part. A subclass writes one publish call (``_write_call``),
    reads and replays. ``kind`` and ``redacted_url`` name it in logs."""

    def __init__(
        self,
        url: str,
        *,
        kind: str,
        redacted_url: str,
        unavailable: str,
        block_ms: int,
        history_size: int,
        channel_ttl_seconds: float,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        log_size: int = DEFAULT_LOG_SIZE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idempotency_seconds: float = DEFAULT_IDEMPOTENCY_SECONDS,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.history_size = max(1, history_size)
        self.log_size = max(1, log_size)
        self.channel_ttl_ms = int(channel_ttl_seconds * 1000)
        # Keyed publishes' records expire after this (at least a millisecond: PX 0 is refused).
        self.idempotency_ms = max(1, int(idempotency_seconds * 1000))
        self.key_prefix = key_prefix
        self.block_ms = block_ms
        self.kind = kind
        self.redacted_url = redacted_url
        self.state = "disconnected"
        self.reconnects = 0
        self.read_errors = 0
        self.resyncs = 0
        self._listener: EventListener | None = None
        self._resync: ResyncListener | None = None
        self._closing = False
        self._interest: dict[str, int] = {}
        # Local subscribers that may want any channel (patterns): the readers keep all.
        self._every_channel = 0
        # What a replay's first read is sized on (app.broker.pages, design note 3): the
        # readers see every event, so they keep the largest lately.
        self.recent_largest = RecentLargest(max_event_bytes + FRAME_OVERHEAD_BYTES)
        self._publishing = PublishQueue(
            self._write_call, unavailable=unavailable, task_name=f"herald {kind} publish"
        )

    @abstractmethod
    async def _write_call(self, drafts: list[Draft], keys: list[CallKey]) -> CallResult:
        """One publish call for ``drafts``, ``keys`` naming the keyed publishes among them
        (``PublishQueue``'s ``send``)."""

    @property
    def publish_calls(self) -> int:
        return self._publishing.calls

    # --- local interest ------------------------------------------------------

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

    def _wants(self, raw: bytes) -> bool:
        """Whether a local subscriber wants an event whose channel field is ``raw``."""
        if self._every_channel:
            return True
        if b"\n" not in raw:
            return raw.decode() in self._interest
        interest = self._interest
        return any(name in interest for name in channels_of(raw))

    def _offer(
        self,
        listener: EventListener,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        position: EventKey | None = None,
    ) -> None:
        """Pass a log entry to ``listener`` as an Event if a local subscriber wants it (an
        Event is built only then: most entries are for channels nobody here watches).

        The listener (the hub's fan-out) runs in a reader's task, between reads. An
        exception escaping it would end that task for good: this worker's live feed would
        stop (on ``redis+cluster://`` the merge then waits for that shard for ever), and
        the streams the fan-out had not reached would never get the event. So it is logged
        and reported as a skip: every stream resumes from history (contract item 5 of
        ``app.broker.base``), and the reader reads on."""
        body = fields.get(BODY_FIELD)
        if body is not None:
            self.recent_largest.saw(len(body) + FRAME_OVERHEAD_BYTES)
        raw = fields[CHANNEL_FIELD]
        if b"\n" not in raw:
            channel = raw.decode()
            if not (channel in self._interest or self._every_channel):
                return
            channels: tuple[str, ...] = (channel,)
        else:
            channels = channels_of(raw)
            if not (self._every_channel or any(name in self._interest for name in channels)):
                return
        event = entry_event(entry_id, channels, fields, position)
        try:
            listener(event)
        except Exception:
            logger.exception("%s listener failed on event %s", self.kind, event.id)
            self._skipped(f"the listener failed on event {event.id}")

    # --- reading ---------------------------------------------------------------

    async def _read_log(
        self, reader: aioredis.Redis, log_key: str, position: bytes
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The entries of ``log_key`` after ``position`` (at most ``READ_COUNT``), waiting
        up to ``block_ms`` for one; [] if none came."""
        response = await reader.xread(
            {log_key: position},  # type: ignore[dict-item, unused-ignore]
            count=READ_COUNT,
            block=self.block_ms,
        )
        if not response:
            return []
        entries: list[tuple[bytes, dict[bytes, bytes]]] = cast(list[Any], response)[0][1]
        return entries

    async def _log_head(
        self, reader: aioredis.Redis, log_key: str, counter_key: str
    ) -> tuple[bytes | None, int]:
        """A log's newest entry id (None for an empty log) and its counter, read together."""
        async with reader.pipeline(transaction=True) as pipe:
            pipe.xrevrange(log_key, count=1)
            pipe.get(counter_key)
            newest, counter = await pipe.execute()
        return (cast(bytes, newest[0][0]) if newest else None), int(counter or 0)

    # --- failures ------------------------------------------------------------

    def _skipped(self, why: str) -> None:
        """The live feed may have skipped events: the hub closes every stream, and clients
        resume from history (contract item 5 of ``app.broker.base``)."""
        self.resyncs += 1
        logger.warning(
            "%s live feed skipped events (%s): streams resume from history", self.kind, why
        )
        if self._resync is not None:
            self._resync(why)

    def _connected(self, failure: BaseException | None) -> None:
        """How ``connect`` went: "ok", or "down" and serving degraded (``connect`` never
        fails for a broker that is merely unreachable: the readers reconnect)."""
        if failure is None:
            self.state = "ok"
            return
        logger.warning(
            "%s unreachable at %s: %s; serving degraded until it is back",
            self.kind,
            self.redacted_url,
            failure,
        )
        self.state = "down"

    def _mark_down(self, exc: BaseException, part: str = "") -> None:
        """A command failed (on ``part``, if only part of the backplane): ``state`` is
        "down" until the readers read again."""
        if self.state == "ok":
            logger.warning("%s unavailable at %s%s: %s", self.kind, self.redacted_url, part, exc)
        self.state = "down"

    def _reading_again(self) -> None:
        """The readers read again after a failure: ``state`` is "ok"."""
        logger.info("%s reader reconnected to %s", self.kind, self.redacted_url)
        self.reconnects += 1
        self.state = "ok"

    # --- housekeeping --------------------------------------------------------

    def sweep(self, now: float) -> int:
        return 0  # Redis expires idle channel streams itself (PEXPIRE on publish)

    def trim_history(self, keep: int) -> int:
        return 0  # history lives in Redis, not in this process's memory

    def stats(self) -> dict[str, object]:
        return {
            "state": self.state,
            "publish_calls": self.publish_calls,
            "channels_read": len(self._interest),
            "every_channel_readers": self._every_channel,
            "reconnects": self.reconnects,
            "read_errors": self.read_errors,
            "resyncs": self.resyncs,
        }
