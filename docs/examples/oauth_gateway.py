"""A gateway (or any non-Flask service) asking the API whether a credential may be used."""

from __future__ import annotations

from typing import Any

import requests

INTROSPECTION_URL = "https://api.example.com/auth/introspect"


def check_credential(
    presented: str, gateway_key: str, url: str = INTROSPECTION_URL
) -> dict[str, Any] | None:
    """What the presented key or access token may do, or ``None`` if it must be refused.

    ``gateway_key`` is a key with the ``apikeys:introspect`` scope. The answer carries
    ``scope`` (space-separated), ``client_id`` (the key's id), ``org``, ``exp``...
    """
    response = requests.post(
        url,
        data={"token": presented},
        headers={"Authorization": f"Bearer {gateway_key}"},
        timeout=5,
    )
    response.raise_for_status()  # 401/403: the gateway's own key is wrong; 429: slow down
    answer: dict[str, Any] = response.json()
    return answer if answer["active"] else None
