"""Bounded conversation history: the context handed to a producer.

Every bound is enforced at write time, so the worst-case memory is fixed by the
constructor arguments and no cleanup task is needed::

    max_conversations x (max_messages Message objects
                         + max_content_messages x max_content_length characters)

With the defaults that is 1000 x (10 messages + 5 x 200 chars): 10,000 small
``Message`` objects and at most 1,000,000 characters of content (under 4 MB even
if every character needs CPython's 4-byte representation). Conversation ids are
not capped here; the caller (the API layer) must bound their length.

Design decisions (read the reason before "fixing" one):

* **Roles outlive content.** Older turns keep their role with an empty content,
  so a producer still sees the shape of the conversation (who spoke, how many
  turns) while only the recent turns pay for their text.
* **Content is blanked eagerly on append**, not when ``context()`` is read, so the
  memory of an old turn is released as soon as it leaves the content window
  rather than lingering until someone reads the conversation.
* **Content is cut at append time** to ``max_content_length`` characters: a
  single huge message must not get around the bound for its whole lifetime.
* **Conversations are evicted least-recently-used.** Appending to or reading a
  conversation marks it used; an abandoned conversation goes first.
* **No locks.** Every method is synchronous and never awaits, so under asyncio
  each call is atomic with respect to other coroutines. Do not share one
  instance between threads.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import get_args

from app.responses.producers.base import Message, Role

__all__ = [
    "DEFAULT_MAX_CONTENT_LENGTH",
    "DEFAULT_MAX_CONTENT_MESSAGES",
    "DEFAULT_MAX_CONVERSATIONS",
    "DEFAULT_MAX_MESSAGES",
    "ConversationStore",
]

DEFAULT_MAX_CONVERSATIONS = 1000
DEFAULT_MAX_MESSAGES = 10
DEFAULT_MAX_CONTENT_MESSAGES = 5
DEFAULT_MAX_CONTENT_LENGTH = 200

# Checked at runtime: roles arrive from request bodies, which typing cannot vouch for.
_ROLES: frozenset[str] = frozenset(get_args(Role))


class ConversationStore:
    """Recent messages per conversation id, with every dimension bounded."""

    def __init__(
        self,
        max_conversations: int = DEFAULT_MAX_CONVERSATIONS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_content_messages: int = DEFAULT_MAX_CONTENT_MESSAGES,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
    ) -> None:
        for name, value in (
            ("max_conversations", max_conversations),
            ("max_messages", max_messages),
            ("max_content_messages", max_content_messages),
            ("max_content_length", max_content_length),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if max_content_messages > max_messages:
            raise ValueError(
                f"max_content_messages ({max_content_messages}) must not exceed "
                f"max_messages ({max_messages})"
            )
        self._max_conversations = max_conversations
        self._max_messages = max_messages
        self._max_content_messages = max_content_messages
        self._max_content_length = max_content_length
        # Insertion order doubles as recency order: first = least recently used.
        self._conversations: OrderedDict[str, deque[Message]] = OrderedDict()
        self._evicted = 0

    def append(self, conversation_id: str, role: Role, content: str) -> None:
        """Record one turn, creating the conversation (and evicting) if needed."""
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {sorted(_ROLES)}")
        messages = self._conversations.get(conversation_id)
        if messages is None:
            # maxlen makes the deque drop its oldest message by itself.
            messages = deque(maxlen=self._max_messages)
            self._conversations[conversation_id] = messages
            if len(self._conversations) > self._max_conversations:
                self._conversations.popitem(last=False)
                self._evicted += 1
        else:
            self._conversations.move_to_end(conversation_id)
        messages.append(Message(role, content[: self._max_content_length]))
        # One append pushes at most one message out of the content window: the
        # one just before the newest max_content_messages. Blanking it here keeps
        # the invariant "only the window holds content" without a scan.
        index = len(messages) - self._max_content_messages - 1
        if index >= 0 and messages[index].content:
            messages[index] = Message(messages[index].role, "")

    def context(self, conversation_id: str) -> tuple[Message, ...]:
        """The stored turns, oldest first; empty (and nothing created) if unknown."""
        messages = self._conversations.get(conversation_id)
        if messages is None:
            return ()
        self._conversations.move_to_end(conversation_id)
        return tuple(messages)

    def discard(self, conversation_id: str) -> None:
        """Forget a conversation; unknown ids are ignored (like ``set.discard``)."""
        self._conversations.pop(conversation_id, None)

    def clear(self) -> int:
        """Forget every conversation; return how many were dropped."""
        dropped = len(self._conversations)
        self._conversations.clear()
        return dropped

    def stats(self) -> dict[str, int]:
        """Occupancy and eviction count.

        O(total messages), which the bounds cap (10,000 with the defaults); cheap
        enough for a stats endpoint and simpler than counters that could drift.
        """
        return {
            "conversations": len(self._conversations),
            "messages": sum(len(messages) for messages in self._conversations.values()),
            "content_chars": sum(
                len(message.content)
                for messages in self._conversations.values()
                for message in messages
            ),
            "max_conversations": self._max_conversations,
            "evicted": self._evicted,
        }

    def __len__(self) -> int:
        return len(self._conversations)
