"""Channel grants in the shape Mercure hubs use, so one token works for both.

A JWT grants channels through ``{"mercure": {"publish": [...], "subscribe": [...]}}``.
Each entry is a *selector*: ``*`` (every channel), an exact channel name, or a
pattern whose ``{placeholder}`` segments match exactly one path segment
(``users/{id}/inbox`` matches ``users/42/inbox``, not ``users/4/2/inbox``).
Selectors are compiled once per token; a malformed one matches nothing rather
than failing the whole token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ANONYMOUS", "Grants", "Selector", "compile_selector"]

_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_SEGMENT = "[^/]+"
MAX_SELECTORS = 256
MAX_SELECTOR_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Selector:
    source: str
    pattern: re.Pattern[str] | None  # None: matches every channel

    def matches(self, channel: str) -> bool:
        return self.pattern is None or self.pattern.fullmatch(channel) is not None


def compile_selector(source: object) -> Selector | None:
    """A selector, or None when ``source`` is not one (wrong type, too long, stray braces)."""
    if not isinstance(source, str) or not source or len(source) > MAX_SELECTOR_LENGTH:
        return None
    if source == "*":
        return Selector(source, None)
    literals = _PLACEHOLDER.split(source)
    if any("{" in literal or "}" in literal for literal in literals):
        return None
    return Selector(source, re.compile(_SEGMENT.join(re.escape(part) for part in literals)))


def _compile_all(sources: object) -> tuple[Selector, ...]:
    if not isinstance(sources, list):
        return ()
    selectors = (compile_selector(source) for source in sources[:MAX_SELECTORS])
    return tuple(selector for selector in selectors if selector is not None)


@dataclass(frozen=True, slots=True)
class Grants:
    """What one token allows. ``authenticated`` is False only for anonymous clients."""

    publish: tuple[Selector, ...] = ()
    subscribe: tuple[Selector, ...] = ()
    authenticated: bool = True

    @classmethod
    def from_claims(cls, claims: dict[str, object]) -> Grants:
        mercure = claims.get("mercure")
        if not isinstance(mercure, dict):
            return cls()
        return cls(
            publish=_compile_all(mercure.get("publish")),
            subscribe=_compile_all(mercure.get("subscribe")),
        )

    def can_publish(self, channel: str) -> bool:
        return any(selector.matches(channel) for selector in self.publish)

    def can_subscribe(self, channel: str) -> bool:
        return any(selector.matches(channel) for selector in self.subscribe)

    def private_channels(self, channels: Iterable[str]) -> frozenset[str]:
        """The channels among ``channels`` on which this client may see private events."""
        granted = frozenset(channel for channel in channels if self.can_subscribe(channel))
        # Kept by the stream for its whole life: most streams share the one empty set.
        return granted or _NO_CHANNELS


_NO_CHANNELS: frozenset[str] = frozenset()


ANONYMOUS = Grants(authenticated=False)
