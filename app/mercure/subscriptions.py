"""Active subscriptions: the registry behind the subscription API and the documents
of subscription events.

Design decisions:

1. A subscriber is one connection, named ``urn:uuid:<random>`` by the hub (never
   by the client, never derived from ``sub``): ids cannot be forged or collide.
2. The registry holds active subscriptions only, at most
   ``MERCURE_SUBSCRIPTIONS_MAX``; a stream that would pass the bound is refused
   (503) rather than left out of the events and the API.
3. It is per worker: it holds the subscriptions of this process's streams. The
   API lists every worker's by asking the others (``app.mercure.gather``); the
   events are published through the hub, so with ``redis://`` every worker's
   subscribers see every worker's subscription events.
4. Topics and ids follow the spec's template, each variable percent-encoded
   exactly once as a whole (``quote(value, safe="")``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from app.mercure.topics import HUB_PATH

__all__ = [
    "SUBSCRIPTIONS_PATH",
    "Subscription",
    "SubscriptionRegistry",
    "SubscriptionsFull",
    "new_subscriber_id",
]

SUBSCRIPTIONS_PATH = HUB_PATH + "/subscriptions"


class SubscriptionsFull(Exception):
    pass


def new_subscriber_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class Subscription:
    match_type: str
    match: str
    subscriber: str
    payload: dict[str, object] | None = field(default=None, compare=False)
    # Made once: the registry's key and the channel of the subscription's events are
    # then one string for the subscription's whole life, not one copy each.
    topic: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        topic = (
            f"{SUBSCRIPTIONS_PATH}/{self.match_type}/{quote(self.match, safe='')}"
            f"/{quote(self.subscriber, safe='')}"
        )
        object.__setattr__(self, "topic", topic)

    def document(self, active: bool = True) -> dict[str, object]:
        doc: dict[str, object] = {
            "id": self.topic,
            "type": "subscription",
            "match_type": self.match_type,
            "match": self.match,
            "subscriber": self.subscriber,
            "active": active,
        }
        if self.payload is not None:
            doc["payload"] = self.payload
        return doc

    def event_data(self, active: bool) -> str:
        return json.dumps(self.document(active), separators=(",", ":"), ensure_ascii=False)


class SubscriptionRegistry:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: dict[str, Subscription] = {}  # by topic, in creation order

    def __len__(self) -> int:
        return len(self._active)

    def check_room(self, count: int) -> None:
        if len(self._active) + count > self.limit:
            raise SubscriptionsFull(f"too many active subscriptions (limit {self.limit})")

    def add(self, subscriptions: Sequence[Subscription]) -> None:
        self.check_room(len(subscriptions))
        for subscription in subscriptions:
            self._active[subscription.topic] = subscription

    def remove(self, subscriptions: Iterable[Subscription]) -> None:
        for subscription in subscriptions:
            self._active.pop(subscription.topic, None)

    def select(self, match_type: str | None = None, match: str | None = None) -> list[Subscription]:
        return [
            s
            for s in self._active.values()
            if (match_type is None or s.match_type == match_type)
            and (match is None or s.match == match)
        ]

    def get(self, topic: str) -> Subscription | None:
        return self._active.get(topic)
