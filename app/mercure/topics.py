"""Mercure's rules for topic strings and publish fields, in one place.

Design decisions:

1. One character rule for topics, matchers, ids and types (the spec's): valid
   UTF-8 (a ``str`` decoded strictly), no C0, DEL or C1 control character and
   no Unicode format character (category ``Cf``: bidirectional and zero-width
   controls). That rule is also what keeps CR, LF and NUL out of the SSE
   framing, so it is checked once, where the request enters.
2. The reserved hub namespace is tested on the *resolved, normalized path*, as
   the spec requires: the topic is resolved against the hub's URL with the
   standard library's RFC 3986 resolver (plus the WHATWG rule that a backslash
   is a slash in http(s) URLs), dot segments removed and percent-encoded
   unreserved characters decoded — so ``/.well-known/%6Dercure/x`` and
   ``https://other.host/.well-known/mercure/../mercure/x`` are both caught. A
   topic that is not a URL reference cannot name a hub path and passes.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urljoin, urlsplit

__all__ = [
    "EARLIEST",
    "HUB_PATH",
    "MERCURE_EVENT_TYPE",
    "WILDCARD",
    "forbidden_character",
    "in_reserved_namespace",
    "normalize_path",
]

HUB_PATH = "/.well-known/mercure"
EARLIEST = "earliest"
"""The reserved ``Last-Event-ID`` value: everything the hub still has."""
MERCURE_EVENT_TYPE = "mercure"
"""The SSE ``event`` of hub-generated updates (subscription events); publishers may not use it."""
WILDCARD = "*"

# C0 controls, DEL and C1 controls; category Cf is checked with unicodedata.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_UNRESERVED = re.compile(r"%([0-9A-Fa-f]{2})")
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
_UNRESERVED_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def forbidden_character(value: str) -> str | None:
    """The first character Mercure forbids in ``value`` (as ``U+XXXX``), or None."""
    match = _CONTROL.search(value)
    if match is not None:
        return f"U+{ord(match.group()):04X}"
    if value.isascii():
        return None
    for char in value:
        if unicodedata.category(char) == "Cf" or 0xD800 <= ord(char) <= 0xDFFF:
            return f"U+{ord(char):04X}"
    return None


def _decode_unreserved(path: str) -> str:
    def decode(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED_CHARS else match.group().upper()

    return _UNRESERVED.sub(decode, path)


def normalize_path(path: str) -> str:
    """RFC 3986 normalization of a path: unreserved octets decoded, dot segments removed."""
    segments: list[str] = []
    for segment in _decode_unreserved(path).split("/"):
        if segment == "..":
            if len(segments) > 1:
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    normalized = "/".join(segments)
    if path.endswith(("/.", "/..")):
        normalized += "/"
    return normalized if normalized.startswith("/") else "/" + normalized


def in_reserved_namespace(topic: str, hub_url: str) -> bool:
    """Whether ``topic``, resolved against ``hub_url``, addresses the hub's own path subtree."""
    try:
        resolved = urlsplit(urljoin(hub_url, topic))
    except ValueError:
        return False  # not a URL reference: it cannot name a hub path
    if not resolved.scheme:
        return False
    raw_path = resolved.path or "/"
    if resolved.scheme in _SPECIAL_SCHEMES:
        raw_path = raw_path.replace("\\", "/")
    path = normalize_path(raw_path)
    hub_path = normalize_path(urlsplit(hub_url).path)
    return path == hub_path or path.startswith(hub_path + "/")
