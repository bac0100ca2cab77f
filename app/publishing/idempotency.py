"""The ``Idempotency-Key`` request header: what a publisher may send, read once.

The IETF httpapi draft "The Idempotency-Key HTTP Header Field" writes the value as a
structured-field string (``Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"``);
many clients send it bare. Both are accepted. After the quotes are taken off, a key is
1 to ``MAX_KEY_LENGTH`` characters, each visible ASCII (0x21-0x7E) other than ``"`` and
``\\``: it names a Redis key and appears in logs, so nothing in it needs escaping, and an
sf-string escape could only yield one of the two refused characters. Anything else is a
422 naming the rule, and nothing is published.
"""

from __future__ import annotations

from app.publishing.errors import PublishRefusedError

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "IdempotencyKeyReusedError",
    "parse_idempotency_key",
]

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
"""Set to ``true`` on an answer that repeats an earlier publish's (nothing was published)."""
MAX_KEY_LENGTH = 255
_QUOTE = 0x22
_BACKSLASH = 0x5C
_ALLOWED = frozenset(range(0x21, 0x7F)) - {_QUOTE, _BACKSLASH}

_LENGTH_RULE = f"{IDEMPOTENCY_KEY_HEADER} must be 1 to {MAX_KEY_LENGTH} characters"
_CHARACTER_RULE = (
    f"{IDEMPOTENCY_KEY_HEADER} may hold only visible ASCII characters other than"
    " '\"' and '\\' (send it as a quoted string or bare)"
)


class IdempotencyKeyReusedError(PublishRefusedError):
    """422: the key was used within the window with a different request."""

    def __init__(self) -> None:
        super().__init__(422, f"{IDEMPOTENCY_KEY_HEADER} was used with a different request")


def parse_idempotency_key(raw: bytes) -> str:
    """The key a header value names: ``raw`` quoted (an sf-string) or bare. Raises
    ``PublishRefusedError`` (422) naming the rule it breaks."""
    value = raw
    if len(value) >= 2 and value[0] == _QUOTE and value[-1] == _QUOTE:
        value = value[1:-1]
    if not 0 < len(value) <= MAX_KEY_LENGTH:
        raise PublishRefusedError(422, _LENGTH_RULE)
    if not _ALLOWED.issuperset(value):
        raise PublishRefusedError(422, _CHARACTER_RULE)
    return value.decode("ascii")
