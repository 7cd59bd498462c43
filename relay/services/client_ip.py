"""Which address a request came from: the socket peer, or what trusted proxies say it was."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# A unix-socket peer has no address; "unix" in RELAY_TRUSTED_PROXIES trusts it.
UNIX = "unix"


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_address(entry: str) -> Address | None:
    """An X-Forwarded-For entry's address. Some proxies (Azure's Application Gateway,
    for one) write the client's port too: `203.0.113.7:50312`, `[2001:db8::7]:443`."""
    entry = entry.strip()
    if entry.startswith("["):
        host, bracket, port = entry[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
        entry = host
    elif entry.count(":") == 1:  # an IPv6 address has at least two
        host, _, port = entry.partition(":")
        if not port.isdigit():
            return None
        entry = host
    return _address(entry)


def limited_address(address: str) -> str:
    """What a per-address limit counts: an IPv6 caller by its /64, the block one
    subscriber is usually given (each of its 2**64 addresses would otherwise be a
    fresh budget), anything else as it is."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return address


class TrustedProxies:
    """The proxies whose X-Forwarded-For entries are believed (CIDRs, and "unix")."""

    def __init__(self, entries: Iterable[str]) -> None:
        entries = tuple(entries)
        self.unix = UNIX in entries
        self.networks = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != UNIX
        )

    def __bool__(self) -> bool:
        return self.unix or bool(self.networks)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client_address(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        """The right-most address not itself a trusted proxy, starting from the peer.

        Each proxy appends the address it was talked to by, so only entries
        right of the first untrusted hop were written by proxies we trust;
        anything further left is whatever the client chose to send.
        """
        hop = _address(peer) if peer else None
        if hop is None:
            if not self.unix:
                return str(peer) if peer else UNIX
            nearest = UNIX
        elif not self.trusts(hop):
            return str(hop)
        else:
            nearest = str(hop)
        entries = [entry for header in forwarded_for for entry in header.split(",")]
        for entry in reversed(entries):
            if not entry.strip():
                continue
            address = _forwarded_address(entry)
            if address is None:
                # Not something a proxy writes: believe only the hop that passed it on.
                return nearest
            nearest = str(address)
            if not self.trusts(address):
                return nearest
        return nearest
