"""Channel names: what a channel may be called, and an event's list of channels.

A channel name travels in URLs (``/events/{channel}``), in query strings, in JSON
bodies and in Redis keys, and is echoed into error details: ASCII letters, digits
and ``._:/-`` only, so it never needs escaping in any of them, and no longer than
:data:`MAX_CHANNEL_NAME_LENGTH`. Every front checks names with these rules before
anything reaches the hub or the broker, which then trust them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "CHANNEL_PATTERN",
    "MAX_CHANNEL_NAME_LENGTH",
    "InvalidChannelError",
    "event_channels",
    "validate_channel",
]

MAX_CHANNEL_NAME_LENGTH = 128
CHANNEL_PATTERN = re.compile(rf"[A-Za-z0-9._:/-]{{1,{MAX_CHANNEL_NAME_LENGTH}}}")

_valid_channel = CHANNEL_PATTERN.fullmatch


class InvalidChannelError(ValueError):
    """A channel name, or an event's list of channels, breaks the rules; the message says how."""


def validate_channel(channel: str) -> str:
    if not isinstance(channel, str) or not _valid_channel(channel):
        raise InvalidChannelError(
            f"invalid channel name {str(channel)[:140]!r}: use 1-{MAX_CHANNEL_NAME_LENGTH} "
            "letters, digits or ._:/-"
        )
    return channel


def event_channels(channels: str | Sequence[str], limit: int) -> tuple[str, ...]:
    """An event's distinct, valid channels in the given order (at least one, at most
    ``limit``); raises ``InvalidChannelError`` naming what is wrong."""
    if isinstance(channels, str):
        return (validate_channel(channels),)
    if len(channels) == 1:
        return (validate_channel(channels[0]),)
    names = tuple(dict.fromkeys(validate_channel(name) for name in channels))
    if not names:
        raise InvalidChannelError("an event needs at least one channel")
    if len(names) > limit:
        raise InvalidChannelError(f"too many channels for one event (limit {limit})")
    return names
