"""The third attack pass on ``X-Forwarded-For``: an entry with a port is the address before it.

Some proxies write the client as ``address:port`` (Azure Application Gateway, IIS ARR) or
``[IPv6]:port``. That text was taken as the client's address as it was, so every new
connection (a new source port) was a new client: the failed-attempt block and the limit of
requests without a key never caught up with anyone, and a key's ``allowed_networks`` refused
its own clients.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_apikeys.network import client_address

from .helpers import bearer, new_key


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_TRUSTED_PROXIES": 1, "APIKEYS_FAILED_AUTH_LIMIT": "3/minute"}


def through_proxy(entry: str, secret: str) -> dict[str, Any]:
    """Test-client arguments of a request with ``secret`` that a trusted proxy forwarded for
    ``entry`` (after a spoofed entry of the client's own)."""
    return {
        "environ_base": {"REMOTE_ADDR": "10.0.0.2"},
        "headers": {"X-Forwarded-For": f"198.51.100.1, {entry}", **bearer(secret)},
    }


@pytest.mark.parametrize(
    "entries",
    [
        [f"203.0.113.9:{port}" for port in range(50001, 50007)],
        [f"[2001:db8::{host}]:443" for host in range(1, 7)],
    ],
    ids=["ipv4-with-port", "ipv6-with-port"],
)
def test_a_client_changing_its_source_port_stays_blocked(app: Flask, entries: list[str]) -> None:
    key = new_key(app)
    wrong = key.secret[:-8] + "AAAAAAAA"
    client = app.test_client()
    statuses = [
        client.get("/v1/presentations", **through_proxy(entry, wrong)).status_code
        for entry in entries
    ]
    assert statuses[:3] == [401, 401, 401]
    assert set(statuses[3:]) == {429}
    # The right key from a fresh port is refused too: the block holds before any comparison.
    fresh = entries[0].rsplit(":", 1)[0] + ":59999"
    right = client.get("/v1/presentations", **through_proxy(fresh, key.secret))
    assert right.status_code == 429


def test_a_key_bound_to_networks_works_through_a_proxy_that_adds_ports(app: Flask) -> None:
    key = new_key(app, allowed_networks=["203.0.113.0/24", "2001:db8::/32"])
    client = app.test_client()
    for entry, status in [
        ("203.0.113.9:50001", 200),
        ("[2001:db8::5]:443", 200),
        ("192.0.2.1:50001", 403),
    ]:
        response = client.get("/v1/presentations", **through_proxy(entry, key.secret))
        assert response.status_code == status, entry


@pytest.mark.parametrize(
    ("forwarded", "address"),
    [
        ("203.0.113.9:50001", "203.0.113.9"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("203.0.113.9", "203.0.113.9"),
    ],
)
def test_the_client_address_drops_a_port_and_brackets(forwarded: str, address: str) -> None:
    environ = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": forwarded}
    assert client_address(environ, 1) == address
