"""Tests for the bounded conversation history."""

from __future__ import annotations

import pytest

from app.responses.conversations import ConversationStore
from app.responses.producers.base import Message


def contents(store: ConversationStore, conversation_id: str) -> list[str]:
    return [message.content for message in store.context(conversation_id)]


def test_append_and_context_keep_order_and_roles() -> None:
    store = ConversationStore()
    store.append("c", "user", "hi")
    store.append("c", "assistant", "hello")

    assert store.context("c") == (Message("user", "hi"), Message("assistant", "hello"))


def test_messages_per_conversation_are_capped_dropping_oldest() -> None:
    store = ConversationStore(max_messages=3, max_content_messages=3)
    for i in range(5):
        store.append("c", "user", f"m{i}")

    assert contents(store, "c") == ["m2", "m3", "m4"]


def test_content_outside_window_is_blanked_but_role_kept() -> None:
    store = ConversationStore(max_messages=5, max_content_messages=2)
    store.append("c", "system", "be brief")
    store.append("c", "user", "q1")
    store.append("c", "assistant", "a1")
    store.append("c", "user", "q2")

    context = store.context("c")

    assert [m.role for m in context] == ["system", "user", "assistant", "user"]
    assert [m.content for m in context] == ["", "", "a1", "q2"]


def test_content_is_blanked_eagerly_on_append() -> None:
    # stats() reads storage without calling context(), so it shows whether the
    # text outside the window is still held in memory.
    store = ConversationStore(max_messages=10, max_content_messages=2)
    for _ in range(6):
        store.append("c", "user", "x" * 10)

    assert store.stats()["content_chars"] == 20
    assert store.stats()["messages"] == 6


def test_content_is_cut_to_max_length_at_append() -> None:
    store = ConversationStore(max_content_length=5)
    store.append("c", "user", "abcdefghij")
    store.append("c", "user", "abc")

    assert contents(store, "c") == ["abcde", "abc"]
    assert store.stats()["content_chars"] == 8


def test_least_recently_used_conversation_is_evicted_and_counted() -> None:
    store = ConversationStore(max_conversations=2)
    store.append("a", "user", "1")
    store.append("b", "user", "2")
    store.append("a", "user", "3")  # "b" is now least recently used

    store.append("c", "user", "4")

    assert len(store) == 2
    assert store.context("b") == ()
    assert contents(store, "a") == ["1", "3"]
    assert contents(store, "c") == ["4"]
    assert store.stats()["evicted"] == 1


def test_reading_context_refreshes_recency() -> None:
    store = ConversationStore(max_conversations=2)
    store.append("a", "user", "1")
    store.append("b", "user", "2")

    store.context("a")  # "b" is now least recently used
    store.append("c", "user", "3")

    assert store.context("b") == ()
    assert contents(store, "a") == ["1"]


def test_context_of_unknown_id_is_empty_and_creates_nothing() -> None:
    store = ConversationStore()

    assert store.context("nope") == ()
    assert len(store) == 0
    assert store.stats()["conversations"] == 0


def test_discard_forgets_one_conversation() -> None:
    store = ConversationStore()
    store.append("a", "user", "1")
    store.append("b", "user", "2")

    store.discard("a")
    store.discard("never-existed")

    assert store.context("a") == ()
    assert len(store) == 1
    assert store.stats()["evicted"] == 0


def test_clear_returns_number_dropped() -> None:
    store = ConversationStore()
    for cid in ("a", "b", "c"):
        store.append(cid, "user", "x")

    assert store.clear() == 3
    assert len(store) == 0
    assert store.stats()["messages"] == 0


def test_stats() -> None:
    store = ConversationStore(
        max_conversations=4, max_messages=3, max_content_messages=2, max_content_length=4
    )
    store.append("a", "user", "123456")  # cut to 4, later blanked
    store.append("a", "assistant", "ab")
    store.append("a", "user", "xyz")
    store.append("b", "user", "q")

    assert store.stats() == {
        "conversations": 2,
        "messages": 4,
        "content_chars": 2 + 3 + 1,
        "max_conversations": 4,
        "evicted": 0,
    }


def test_unknown_role_is_rejected() -> None:
    store = ConversationStore()

    with pytest.raises(ValueError):
        store.append("c", "robot", "hi")  # type: ignore[arg-type]
    assert len(store) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_conversations": 0},
        {"max_messages": 0},
        {"max_content_messages": 0},
        {"max_content_length": -1},
        {"max_messages": 3, "max_content_messages": 4},
    ],
)
def test_constructor_rejects_invalid_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ConversationStore(**kwargs)
