"""The client's address, trusting ``X-Forwarded-For`` only from our own proxies.

Behind a proxy every request comes from the proxy's address, so per-client
limits need the address it forwards. But anyone can send that header: it is
believed only when the direct peer is in ``TRUSTED_PROXIES``, and then read
from the right, skipping further trusted hops, so a client cannot prepend a
spoofed address of its choosing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.requests import HTTPConnection

__all__ = ["TrustedProxies", "client_address"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FORWARDED_HOPS = 20


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: Sequence[IPNetwork] = tuple(
            ipaddress.ip_network(network.strip(), strict=False) for network in networks
        )

    def trusts(self, address: str) -> bool:
        parsed = _parse(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")][-MAX_FORWARDED_HOPS:]
        for hop in reversed(hops):
            if _parse(hop) is None:
                break  # garbage in the chain: stop believing it
            if not self.trusts(hop):
                return hop
        # Every hop was one of ours (or garbage): the best we know is the first valid hop.
        valid = [hop for hop in hops if _parse(hop) is not None]
        return valid[0] if valid else peer


def client_address(request: HTTPConnection) -> str:
    """A request's client address: ``X-Forwarded-For`` is believed only from TRUSTED_PROXIES
    (the app's ``TrustedProxies``, ``app.state.proxies``). Every front asks here, so a client
    counts as the same address for the stream limits and the publish rate, whichever it uses."""
    peer = request.client.host if request.client else ""
    proxies: TrustedProxies = request.app.state.proxies
    return proxies.client(peer, request.headers.get("x-forwarded-for"))
