"""A producer that streams its input back, word by word, without any network.

It exists so that Herald can be run, demonstrated and load-tested end to end
without an upstream model server, and so that the SSE path can be tested with a
producer whose output is known in advance.

Design decisions:

- Each chunk is one word *with the whitespace that precedes it* ("hello",
  " world"), so that joining the chunks gives back the input exactly. A client
  that concatenates deltas (as every OpenAI-style client does) then sees the
  original text, newlines and double spaces included.
- The delay is applied *between* chunks, not before the first one, so a delay
  never postpones the start of a response.
- ``asyncio.sleep`` is awaited even when the delay is 0: a zero sleep still
  yields to the event loop, so one long echo cannot starve the other streams.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

from app.responses.producers.base import Message

__all__ = ["DEFAULT_ECHO_DELAY_MS", "DEFAULT_ECHO_NAME", "EchoProducer", "split_words"]

DEFAULT_ECHO_DELAY_MS = 20.0
DEFAULT_ECHO_NAME = "echo"

# A word with the whitespace before it, or the whitespace left at the very end.
# `\Z` rather than `$`, because `$` also matches before a final newline and
# would drop it from the chunks.
_WORD_WITH_LEADING_SPACE = re.compile(r"\s*\S+|\s+\Z")

_MS_PER_SECOND = 1000.0


def split_words(text: str) -> list[str]:
    """Split ``text`` into chunks whose concatenation is exactly ``text``."""
    return _WORD_WITH_LEADING_SPACE.findall(text)


class EchoProducer:
    """Streams the input back word by word, ``delay_ms`` apart."""

    def __init__(self, delay_ms: float = DEFAULT_ECHO_DELAY_MS, name: str = DEFAULT_ECHO_NAME):
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.name = name
        self.delay_ms = delay_ms

    async def stream(self, input: str, context: Sequence[Message]) -> AsyncIterator[str]:
        """Yield the words of ``input``; ``context`` is ignored by design."""
        delay_seconds = self.delay_ms / _MS_PER_SECOND
        for index, chunk in enumerate(split_words(input)):
            if index:
                await asyncio.sleep(delay_seconds)
            yield chunk
