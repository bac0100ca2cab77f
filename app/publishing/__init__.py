"""Publishing: one service under both fronts that publish (Herald's API and the Mercure hub).

``service`` holds the rules (rate, drafts, grants, the broker call and what its refusal
answers), ``bodies`` the one body reader, ``errors`` what a refusal carries,
``idempotency`` the ``Idempotency-Key`` header's rules.
"""

from __future__ import annotations

from app.publishing.bodies import read_body
from app.publishing.errors import ClientGoneError, PublishForbiddenError, PublishRefusedError
from app.publishing.idempotency import (
    IDEMPOTENCY_KEY_HEADER,
    REPLAYED_HEADER,
    IdempotencyKeyReusedError,
    parse_idempotency_key,
)
from app.publishing.service import (
    PublishGrants,
    PublishItem,
    PublishService,
    check_channels,
    item_label,
)

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "REPLAYED_HEADER",
    "ClientGoneError",
    "IdempotencyKeyReusedError",
    "PublishForbiddenError",
    "PublishGrants",
    "PublishItem",
    "PublishRefusedError",
    "PublishService",
    "check_channels",
    "item_label",
    "parse_idempotency_key",
    "read_body",
]
