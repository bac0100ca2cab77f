"""The ``Idempotency-Key`` header's value: quoted (an sf-string) or bare, 1 to 255 visible
ASCII characters other than a quote and a backslash."""

from __future__ import annotations

import pytest

from app.publishing import PublishRefusedError, parse_idempotency_key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b"!", "!"),
        (b'"~"', "~"),
        (b"k" * 255, "k" * 255),
        (b'"' + b"k" * 255 + b'"', "k" * 255),
        (b"a:b/c?d=e&f#g{h}", "a:b/c?d=e&f#g{h}"),
    ],
)
def test_a_key_is_read_quoted_or_bare(raw: bytes, key: str) -> None:
    assert parse_idempotency_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (b"", "1 to 255"),
        (b'""', "1 to 255"),
        (b"k" * 256, "1 to 255"),
        (b'"' + b"k" * 256 + b'"', "1 to 255"),
        (b" k", "visible ASCII"),
        (b"k\tk", "visible ASCII"),
        (b'"', "visible ASCII"),
        (b'"k', "visible ASCII"),
        (b'k"', "visible ASCII"),
        (b'"a\\"b"', "visible ASCII"),
        (b"a\\b", "visible ASCII"),
        (b"\x7f", "visible ASCII"),
        ("é".encode("latin-1"), "visible ASCII"),
        ("é".encode(), "visible ASCII"),
    ],
)
def test_a_key_outside_the_rules_is_a_422_naming_the_rule(raw: bytes, rule: str) -> None:
    with pytest.raises(PublishRefusedError) as refused:
        parse_idempotency_key(raw)
    assert refused.value.status == 422
    assert rule in refused.value.detail and "Idempotency-Key" in refused.value.detail
