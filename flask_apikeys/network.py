"""Where a request comes from, and whether a key may be used from there.

Behind proxies the peer address is the nearest proxy's. ``APIKEYS_TRUSTED_PROXIES`` says how
many proxies the deployment runs in front of the app; the client is then the address that the
outermost trusted proxy saw, i.e. that many entries from the right of ``X-Forwarded-For``.
Entries further left are written by the client and never trusted. With no trusted proxies (the
default), ``X-Forwarded-For`` is ignored entirely. A port some proxies add to the entry
(``203.0.113.9:50123``, ``[2001:db8::1]:443``) is dropped.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_NETWORKS = 100
#: The prefix length an IPv6 client is counted by: a subscriber's /64 (RFC 6177), any
#: address of which its host may pick for each request.
IPV6_CLIENT_PREFIX = 64


def client_address(environ: Mapping[str, Any], trusted_proxies: int) -> str:
    """The client's address as the outermost trusted proxy (or the socket) reports it."""
    peer = str(environ.get("REMOTE_ADDR") or "")
    if trusted_proxies <= 0:
        return peer
    forwarded = [part.strip() for part in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [part for part in forwarded if part]
    if len(forwarded) < trusted_proxies:
        return peer  # fewer hops than configured: do not guess, use the peer we can see
    return without_port(forwarded[-trusted_proxies])


def without_port(entry: str) -> str:
    """An ``X-Forwarded-For`` entry as an address: some proxies (Azure's, IIS ARR) write
    ``address:port`` or ``[IPv6]:port``, and a client that takes a new source port for each
    connection must not become a new client each time."""
    if entry.startswith("["):
        end = entry.find("]")
        return entry[1:end] if end > 0 else entry
    if entry.count(":") == 1:  # IPv4 and a port; an IPv6 address alone has two or more
        return entry.partition(":")[0]
    return entry


@functools.lru_cache(maxsize=4096)
def counted_address(address: str) -> str:
    """What per-address limits (the failed-attempt block, anonymous requests) count ``address``
    as: an IPv6 address by its /64, so a host cannot escape a block by taking another of its
    2**64 addresses; an IPv4-mapped one as its IPv4 address; anything else as it is."""
    if ":" not in address:
        return address
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if not isinstance(parsed, ipaddress.IPv6Address):  # pragma: no cover - a ":" means IPv6
        return address
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    network = ipaddress.IPv6Network((parsed, IPV6_CLIENT_PREFIX), strict=False)
    return str(network)


def parse_networks(values: Iterable[Any]) -> list[str]:
    """Validate CIDR networks (IPv4 or IPv6, host bits allowed) and return them normalised."""
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network such as 203.0.113.0/24") from None
    if len(networks) > MAX_NETWORKS:
        raise ValueError(f"at most {MAX_NETWORKS} networks")
    return sorted(set(networks))


def address_allowed(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether ``address`` lies in one of ``networks`` (an unparsable address never does)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def networks_beyond(
    granter: Iterable[Network | str], requested: Iterable[Network | str]
) -> list[str]:
    """The requested networks that the granter's networks do not contain (no escalation).

    An empty list of networks means "anywhere": a granter restricted to some networks may
    hand out only networks inside them, never "anywhere".
    """
    held = [ipaddress.ip_network(network) for network in granter]
    if not held:
        return []
    wanted = [ipaddress.ip_network(network) for network in requested]
    if not wanted:
        return ["anywhere"]
    return sorted(
        str(network)
        for network in wanted
        if not any(
            network.version == outer.version and network.subnet_of(outer)  # type: ignore[arg-type]
            for outer in held
        )
    )
