"""Topic matchers: ``exact``, ``urlpattern`` and the ``*`` wildcard.

Design decisions:

1. A matcher is a small frozen value (type, source) that is hashable, so equal
   matchers from many subscribers are one key in the hub's pattern index and
   one entry in its match cache (``app.sse.patterns``).
2. ``*`` is recognized before the type is looked at (the spec's rule), and
   becomes the one ``WILDCARD_MATCHER``, whatever the parameter name.
3. URL patterns go through the ``urlpattern`` package (the WHATWG URL Pattern
   standard, in Rust). Its regular expressions run on Rust's ``regex`` engine,
   which matches in linear time, so a pathological pattern cannot backtrack:
   that is the spec's "linear-time engine" option against ReDoS, and the
   pattern length is bounded on top. Relative patterns and relative topics are
   resolved against the hub's URL; ``ignoreCase`` is never set.
4. An exact matcher compares code points (which is byte-for-byte on UTF-8):
   no normalization, no resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from urlpattern import URLPattern

from app.mercure.topics import WILDCARD, forbidden_character

__all__ = [
    "EXACT",
    "MATCHER_TYPES",
    "URLPATTERN",
    "WILDCARD_MATCHER",
    "InvalidMatcherError",
    "Matcher",
    "parse_matcher",
]

EXACT = "exact"
URLPATTERN = "urlpattern"
MATCHER_TYPES = (EXACT, URLPATTERN)


class InvalidMatcherError(ValueError):
    """Not a matcher this hub can evaluate; the message is client-safe."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """One topic matcher. ``kind`` is ``exact``, ``urlpattern`` or ``*`` (the wildcard)."""

    kind: str
    source: str
    _pattern: URLPattern | None = field(default=None, compare=False, hash=False, repr=False)
    _base: str = field(default="", compare=False, hash=False, repr=False)

    @property
    def is_exact(self) -> bool:
        return self.kind == EXACT

    def matches(self, topic: str) -> bool:
        if self.kind == EXACT:
            return topic == self.source
        if self._pattern is None:  # the wildcard
            return True
        try:
            return bool(self._pattern.test(topic, self._base))
        except ValueError:  # the topic is not a URL reference: it cannot match
            return False


WILDCARD_MATCHER = Matcher(WILDCARD, WILDCARD)


def parse_matcher(kind: str, source: str, *, hub_url: str, max_length: int) -> Matcher:
    """The matcher of type ``kind`` for ``source``; raises ``InvalidMatcherError``."""
    if source == WILDCARD:
        return WILDCARD_MATCHER
    if kind not in MATCHER_TYPES:
        raise InvalidMatcherError(f"unsupported matcher type {kind[:40]!r}")
    if not source:
        raise InvalidMatcherError("a matcher must not be empty")
    if len(source) > max_length:
        raise InvalidMatcherError(f"a matcher is longer than {max_length} characters")
    bad = forbidden_character(source)
    if bad is not None:
        raise InvalidMatcherError(f"a matcher holds the forbidden character {bad}")
    if kind == EXACT:
        return Matcher(EXACT, source)
    try:
        pattern = URLPattern(source, hub_url)
    except (ValueError, TypeError) as exc:
        raise InvalidMatcherError(f"not a valid URL pattern: {exc}") from None
    return Matcher(URLPATTERN, source, pattern, hub_url)
