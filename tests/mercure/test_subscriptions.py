"""A subscription's topic and document (the spec's template, encoded once), and what an idle
subscriber keeps: one topic string, and no read grant of its own when it reads nothing private."""

from __future__ import annotations

import json

from app.mercure.grants import ANONYMOUS, MercureGrants, ReadGrant, SubscribeGrant, read_grant
from app.mercure.matchers import EXACT, parse_matcher
from app.mercure.subscriptions import Subscription, SubscriptionRegistry

HUB = "https://example.com/.well-known/mercure"
SUBSCRIBER = "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6"


def test_the_topic_follows_the_template_each_variable_encoded_once() -> None:
    subscription = Subscription("urlpattern", "https://example.com/:selector%41", SUBSCRIBER)
    assert subscription.topic == (
        "/.well-known/mercure/subscriptions/urlpattern/"
        "https%3A%2F%2Fexample.com%2F%3Aselector%2541/"
        "urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
    )
    document = json.loads(subscription.event_data(active=False))
    assert document == {
        "id": subscription.topic,
        "type": "subscription",
        "match_type": "urlpattern",
        "match": "https://example.com/:selector%41",
        "subscriber": SUBSCRIBER,
        "active": False,
    }


def test_a_subscription_keeps_one_topic_string_for_the_registry_and_its_events() -> None:
    subscription = Subscription(EXACT, "https://example.com/a", SUBSCRIBER, {"p": 1})
    assert subscription.topic is subscription.topic
    registry = SubscriptionRegistry(limit=10)
    registry.add((subscription,))
    assert registry.get(subscription.topic) is subscription
    # The topic and the payload are not part of a subscription's identity.
    assert subscription == Subscription(EXACT, "https://example.com/a", SUBSCRIBER)
    registry.remove((subscription,))
    assert len(registry) == 0


def test_streams_that_read_nothing_private_share_one_empty_read_grant() -> None:
    nothing = MercureGrants(subscribe=(SubscribeGrant((), None),))
    shared = read_grant(ANONYMOUS)
    assert shared is read_grant(ANONYMOUS)
    assert "https://example.com/a" not in shared
    assert "https://example.com/a" not in read_grant(nothing)


def test_a_token_that_reads_private_topics_gets_its_own_read_grant() -> None:
    matcher = parse_matcher(EXACT, "https://example.com/a", hub_url=HUB, max_length=1024)
    grants = MercureGrants(subscribe=(SubscribeGrant((matcher,), None),))
    grant = read_grant(grants)
    assert isinstance(grant, ReadGrant) and grant is not read_grant(grants)
    assert "https://example.com/a" in grant
    assert "https://example.com/b" not in grant
