"""Admin stream tickets: issued, verified, and refused when forged, foreign or stale."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import SecretStr

from app.dashboard.tickets import MAX_TICKET_LENGTH, TicketError, issue_ticket, verify_ticket

TOKEN = SecretStr("admin-token-for-tickets")
TTL = 60.0
NOW = 1_800_000_000.0


def ticket_at(at: float = NOW, token: SecretStr = TOKEN) -> str:
    return issue_ticket(token, TTL, now=lambda: at)


def verify(ticket: str, at: float = NOW, token: SecretStr = TOKEN) -> None:
    verify_ticket(ticket, token, TTL, now=lambda: at)


def test_a_fresh_ticket_is_accepted_until_it_expires() -> None:
    ticket = ticket_at()
    verify(ticket)
    verify(ticket, NOW + TTL - 1)
    with pytest.raises(TicketError, match="expired"):
        verify(ticket, NOW + TTL)


def test_tickets_are_distinct_and_short() -> None:
    tickets = {ticket_at() for _ in range(20)}
    assert len(tickets) == 20
    assert all(len(t) < MAX_TICKET_LENGTH and t.isascii() for t in tickets)


def test_a_ticket_from_another_admin_token_is_refused() -> None:
    with pytest.raises(TicketError, match="signature"):
        verify(ticket_at(token=SecretStr("another-token")))


def test_changing_the_expiry_breaks_the_signature() -> None:
    expires, nonce, signature = ticket_at().split(".")
    with pytest.raises(TicketError, match="signature"):
        verify(f"{int(expires) + 3600}.{nonce}.{signature}")


@pytest.mark.parametrize("position", [0, 10, -1])
def test_a_tampered_signature_is_refused(position: int) -> None:
    expires, nonce, signature = ticket_at().split(".")
    flipped = list(signature)
    flipped[position] = "A" if flipped[position] != "A" else "B"
    with pytest.raises(TicketError, match="signature"):
        verify(f"{expires}.{nonce}.{''.join(flipped)}")


def test_the_key_is_derived_not_the_token_itself() -> None:
    """A signature made with the raw token (what a naive HMAC would use) is refused."""
    expires, nonce, _ = ticket_at().split(".")
    message = f"admin-stream:{expires}:{nonce}".encode()
    raw = hmac.new(TOKEN.get_secret_value().encode(), message, hashlib.sha256).digest()
    forged = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    with pytest.raises(TicketError, match="signature"):
        verify(f"{expires}.{nonce}.{forged}")


def test_an_expiry_further_ahead_than_the_ttl_is_refused() -> None:
    """A host whose clock runs far ahead cannot mint tickets that live longer."""
    with pytest.raises(TicketError, match="too far ahead"):
        verify(ticket_at(NOW + 600))
    verify(ticket_at(NOW + 3))  # a few seconds of skew are tolerated


@pytest.mark.parametrize(
    "ticket",
    [
        "",
        "garbage",
        "1.2",
        "a.b.c",
        "-5.nonce.sig",
        "1.2.3.4",
        "9" * 40 + ".n.s",
        "1800000030.n.s" + "x" * MAX_TICKET_LENGTH,
        "1800000030.nönce.sig",
    ],
)
def test_malformed_tickets_are_refused(ticket: str) -> None:
    with pytest.raises(TicketError):
        verify(ticket)
