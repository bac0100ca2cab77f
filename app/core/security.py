"""Comparing secrets: one place, constant time."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

__all__ = ["secret_matches"]


def secret_matches(presented: str, expected: SecretStr) -> bool:
    """Constant-time comparison of UTF-8 bytes: the time taken does not reveal how
    many leading characters of a guess were right."""
    return hmac.compare_digest(presented.encode(), expected.get_secret_value().encode())
