"""The producer interface: anything that streams the text of a response.

A producer is an object with a ``name`` and a ``stream(input, context)`` method
returning an async iterator of text chunks. It knows nothing of SSE, caching or
reconnects: the responses layer runs it once per response id and fans its chunks
out to every follower.

Errors a producer wants shown to the browser are raised as ``ProducerError`` with
a message that is safe to send to a client (no secrets, no stack traces).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Message", "Producer", "ProducerError", "Role"]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation, as handed to a producer."""

    role: Role
    content: str


class ProducerError(Exception):
    """A producer failed; ``str(error)`` is shown to the client as ``detail``."""


class Producer(Protocol):
    """Streams the chunks of one response."""

    name: str

    def stream(self, input: str, context: Sequence[Message]) -> AsyncIterator[str]:
        """Yield the response's text chunk by chunk, given the bounded context."""
        ...
