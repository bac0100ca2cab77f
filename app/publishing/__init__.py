"""Publishing: one service under both fronts that publish (Herald's API and the Mercure hub).

``service`` holds the rules (rate, drafts, grants, the broker call and what its refusal
answers), ``bodies`` the one body reader, ``errors`` what a refusal carries.
"""

from __future__ import annotations

from app.publishing.bodies import read_body
from app.publishing.errors import ClientGoneError, PublishForbiddenError, PublishRefusedError
from app.publishing.service import (
    PublishGrants,
    PublishItem,
    PublishService,
    check_channels,
    item_label,
)

__all__ = [
    "ClientGoneError",
    "PublishForbiddenError",
    "PublishGrants",
    "PublishItem",
    "PublishRefusedError",
    "PublishService",
    "check_channels",
    "item_label",
    "read_body",
]
