"""Publish to a Herald server from Python backends, and mint its subscriber tokens.

::

    from herald_client import HeraldPublisher

    with HeraldPublisher("http://herald:8000", token=PUBLISH_TOKEN) as herald:
        herald.publish("orders/42", {"status": "shipped"}, event="order")

Depends on httpx and the standard library only, never on the server's packages.
"""

from ._client import DEFAULT_TIMEOUT_SECONDS, AsyncHeraldPublisher, HeraldPublisher
from ._exceptions import PublishError, PublishRejected, PublishUnavailable
from ._models import BatchItem, BatchResult, PublishResult
from ._retry import RETRIED_STATUSES, RetryPolicy
from ._tokens import DEFAULT_TOKEN_TTL_SECONDS, mint_subscriber_token, mint_token
from ._version import __version__

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_TOKEN_TTL_SECONDS",
    "RETRIED_STATUSES",
    "AsyncHeraldPublisher",
    "BatchItem",
    "BatchResult",
    "HeraldPublisher",
    "PublishError",
    "PublishRejected",
    "PublishResult",
    "PublishUnavailable",
    "RetryPolicy",
    "__version__",
    "mint_subscriber_token",
    "mint_token",
]
