"""A Mercure subscriber's stream: Herald's stream response, plus what Mercure adds
around it — closing at the token's ``exp`` and announcing the subscriptions.

The stream itself (registration, replay, heartbeats as SSE comments, direct
writes, shutdown) is ``HeraldStreamResponse`` unchanged; this subclass only
wraps its ``_stream`` step, which runs once the hub has registered the
connection and ends when it is over:

* a timer (a loop ``TimerHandle``, not a task) closes the connection at the
  token's ``exp``, as the spec requires for long-lived connections;
* subscription events (``active: true`` then ``false``) are published through
  the hub, private, SSE type ``mercure``, so they reach every worker.

A stream the server detached (``app.sse.stream_response`` design note 9) goes on
after ``_stream`` returns: its ending (the timer cancelled, the subscriptions
removed and announced inactive) is left to the hub, which runs it once the stream
has ended (``Connection.ending``), and only what that ending needs is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container, Iterable

from starlette.types import Receive, Scope, Send

from app.mercure.subscriptions import Subscription, SubscriptionRegistry
from app.mercure.topics import MERCURE_EVENT_TYPE
from app.sse.connection import CloseReason, Connection
from app.sse.hub import Hub
from app.sse.patterns import TopicPattern
from app.sse.stream_response import HeraldStreamResponse

__all__ = ["MercureStreamResponse", "subscription_event_body"]

logger = logging.getLogger("herald.mercure")


def subscription_event_body(subscription: Subscription, active: bool) -> bytes:
    data = subscription.event_data(active)
    return f"event: {MERCURE_EVENT_TYPE}\ndata: {data}\n".encode()


class MercureStreamResponse(HeraldStreamResponse):
    def __init__(
        self,
        hub: Hub,
        channels: tuple[str, ...],
        *,
        patterns: tuple[TopicPattern, ...],
        last_event_id: str | None,
        client: str,
        read_grant: Container[str],
        expires_at: float | None,
        subscriptions: tuple[Subscription, ...],
        registry: SubscriptionRegistry,
        headers: dict[str, str],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            hub,
            channels,
            last_event_id=last_event_id,
            client=client,
            private_channels=read_grant,
            headers=headers,
            patterns=patterns,
            validated=True,
        )
        self._expires_at = expires_at
        self._subscriptions = subscriptions
        self._registry = registry
        self._wall_clock = wall_clock

    async def _stream(
        self, connection: Connection, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        timer = None
        if self._expires_at is not None:
            delay = max(0.0, self._expires_at - self._wall_clock())
            timer = asyncio.get_running_loop().call_later(
                delay, connection.close, CloseReason.TOKEN_EXPIRED
            )
        # Registered here, inside the hub's open, so a refused stream leaves nothing.
        # Added before the active event and removed before the inactive one: the
        # subscription API's list is then never behind its cursor (app.mercure.gather, 2.).
        self._registry.add(self._subscriptions)
        ending = _Ending(self._hub, self._registry, self._subscriptions, timer)
        detached = False
        try:
            await _announce(self._hub, self._subscriptions, active=True)
            detached = await super()._stream(connection, scope, receive, send)
            return detached
        finally:
            if detached:
                connection.ending = ending
            else:
                await ending()


class _Ending:
    """What ends a Mercure stream, kept alone once the stream is detached."""

    __slots__ = ("hub", "registry", "subscriptions", "timer")

    def __init__(
        self,
        hub: Hub,
        registry: SubscriptionRegistry,
        subscriptions: tuple[Subscription, ...],
        timer: asyncio.TimerHandle | None,
    ) -> None:
        self.hub = hub
        self.registry = registry
        self.subscriptions = subscriptions
        self.timer = timer

    async def __call__(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.registry.remove(self.subscriptions)
        await _announce(self.hub, self.subscriptions, active=False)


async def _announce(hub: Hub, subscriptions: Iterable[Subscription], *, active: bool) -> None:
    for subscription in subscriptions:
        try:
            await hub.publish_frame(
                subscription.topic,
                subscription_event_body(subscription, active),
                private=True,
            )
        except Exception:  # the broker is down: the stream itself goes on (or is over)
            logger.warning("subscription event for %s not published", subscription.topic)
