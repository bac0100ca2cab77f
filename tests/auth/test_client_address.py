from __future__ import annotations

import pytest

from app.auth.client_address import TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.5", "1.2.3.4", "203.0.113.5"),  # untrusted peer: header ignored
        ("10.1.2.3", "198.51.100.7", "198.51.100.7"),  # our proxy forwards the client
        ("10.1.2.3", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # spoofed prefix ignored
        ("10.1.2.3", "198.51.100.7, 10.9.9.9", "198.51.100.7"),  # two trusted hops
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", "", "10.1.2.3"),
        ("10.1.2.3", "not-an-ip", "10.1.2.3"),
        ("10.1.2.3", "garbage, 198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "[2001:db8::1]", "[2001:db8::1]"),
        ("127.0.0.1", "10.0.0.1", "10.0.0.1"),  # every hop trusted: the first valid one
    ],
)
def test_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    assert PROXIES.client(peer, forwarded) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert TrustedProxies([]).client("10.1.2.3", "1.2.3.4") == "10.1.2.3"


def test_bad_network_fails_at_start() -> None:
    with pytest.raises(ValueError):
        TrustedProxies(["not/a/network"])
