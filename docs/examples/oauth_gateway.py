"""A gateway (or any non-Flask service) asking the API whether a credential may be used."""

from __future__ import annotations

import ipaddress
from typing import Any

import requests

INTROSPECTION_URL = "https://api.example.com/auth/introspect"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_credential(
    presented: str,
    gateway_key: str,
    url: str = INTROSPECTION_URL,
    client_address: str | None = None,
    method: str = "GET",
) -> dict[str, Any] | None:
    """What the presented key or access token may do, or ``None`` if it must be refused.

    ``gateway_key`` is a key with the ``apikeys:introspect`` scope; ``client_address`` and
    ``method`` are where the request being checked came from and what it does. The answer
    carries ``scope`` (space-separated), ``client_id`` (the key's id), ``org``, ``exp``...,
    and what only the gateway can apply: ``allowed_networks`` for a key bound to networks,
    ``level`` (``read-only``: safe methods only).
    """
    response = requests.post(
        url,
        data={"token": presented},
        headers={"Authorization": f"Bearer {gateway_key}"},
        timeout=5,
    )
    response.raise_for_status()  # 401/403: the gateway's own key is wrong; 429: slow down
    answer: dict[str, Any] = response.json()
    if not answer["active"]:
        return None
    networks = answer.get("allowed_networks")
    if networks and not _inside(client_address, networks):
        return None  # a key bound to networks, used from elsewhere (or from we know not where)
    if answer.get("level") == "read-only" and method.upper() not in SAFE_METHODS:
        return None
    return answer


def _inside(address: str | None, networks: list[str]) -> bool:
    try:
        client = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(client in ipaddress.ip_network(network) for network in networks)
