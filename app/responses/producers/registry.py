"""The set of producers a Herald process can run, looked up by name.

Producers are registered once at start-up and only read afterwards, so the
registry is a plain dict with no locking. A duplicate name is refused rather
than silently replacing the first producer: two producers fighting over one
name is a configuration mistake that should fail at start-up, not surface as
the wrong model answering a request.

Exceptions::

    KeyError
     └── UnknownProducerError   get() with a name nobody registered
    ValueError                  register() with a name already taken
"""

from __future__ import annotations

from collections.abc import Iterable

from app.responses.producers.base import Producer

__all__ = ["ProducerRegistry", "UnknownProducerError"]


class UnknownProducerError(KeyError):
    """No producer is registered under the requested name.

    A ``KeyError`` so that code treating the registry as a mapping still works,
    with a readable ``str`` (``KeyError`` would show the message in quotes).
    """

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listed = ", ".join(repr(known_name) for known_name in self.known) or "none"
        self.message = f"unknown producer {name!r}; known producers: {listed}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class ProducerRegistry:
    """Maps producer names to producers."""

    def __init__(self) -> None:
        self._producers: dict[str, Producer] = {}

    def register(self, producer: Producer) -> None:
        """Add ``producer``; raise ``ValueError`` if its name is already taken."""
        if producer.name in self._producers:
            raise ValueError(f"a producer named {producer.name!r} is already registered")
        self._producers[producer.name] = producer

    def get(self, name: str) -> Producer:
        """Return the producer called ``name`` or raise ``UnknownProducerError``."""
        try:
            return self._producers[name]
        except KeyError:
            raise UnknownProducerError(name, self._producers) from None

    def names(self) -> list[str]:
        """The registered names, sorted so listings and messages are stable."""
        return sorted(self._producers)

    def __contains__(self, name: object) -> bool:
        return name in self._producers
