"""Per-key network allowlists, behind a configured number of trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys
from flask_apikeys.errors import InvalidInput
from flask_apikeys.network import address_allowed, client_address, parse_networks

from .helpers import assert_problem

NETWORKS = ["203.0.113.0/24", "2001:db8::/32"]


def get(client: FlaskClient, key: str, remote: str, forwarded: str | None = None) -> Any:
    headers = {"X-API-Key": key}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return client.get("/v1/whoami", headers=headers, environ_base={"REMOTE_ADDR": remote})


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("203.0.113.7", True),
        ("203.0.114.7", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::ffff:203.0.113.9", True),  # IPv4-mapped IPv6, as dual-stack sockets report it
        ("127.0.0.1", False),
    ],
)
def test_a_key_works_only_from_its_networks(
    client: FlaskClient, make_key: Callable[..., str], remote: str, allowed: bool
) -> None:
    response = get(client, make_key(allowed_networks=NETWORKS), remote)
    if allowed:
        assert response.status_code == 200
    else:
        body = assert_problem(response, 403, "ip_not_allowed")
        assert remote in body["detail"]


def test_a_key_without_networks_works_from_anywhere(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    assert get(client, make_key(), "198.51.100.1").status_code == 200


def test_forwarded_for_is_ignored_without_trusted_proxies(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    response = get(client, make_key(allowed_networks=NETWORKS), "10.0.0.1", "203.0.113.7")
    assert_problem(response, 403, "ip_not_allowed")


class TestBehindTwoProxies:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"APIKEYS_TRUSTED_PROXIES": 2}

    def test_the_address_the_outer_proxy_saw_counts(
        self, client: FlaskClient, make_key: Callable[..., str]
    ) -> None:
        key = make_key(allowed_networks=NETWORKS)
        # client -> proxy A (appends client) -> proxy B (appends A) -> app
        assert get(client, key, "10.0.0.2", "203.0.113.7, 10.0.0.1").status_code == 200

    def test_a_spoofed_leftmost_entry_is_not_trusted(
        self, client: FlaskClient, make_key: Callable[..., str]
    ) -> None:
        key = make_key(allowed_networks=NETWORKS)
        spoofed = "203.0.113.7, 198.51.100.9, 10.0.0.1"
        assert_problem(get(client, key, "10.0.0.2", spoofed), 403, "ip_not_allowed")

    def test_too_few_hops_falls_back_to_the_peer(
        self, client: FlaskClient, make_key: Callable[..., str]
    ) -> None:
        key = make_key(allowed_networks=NETWORKS)
        assert_problem(get(client, key, "10.0.0.2", "203.0.113.7"), 403, "ip_not_allowed")


def test_networks_are_validated_and_normalised(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        created = apikeys.create_key(organization, "k", allowed_networks=["203.0.113.9/24"])
        assert created.api_key.allowed_networks == ["203.0.113.0/24"]
        with pytest.raises(InvalidInput) as raised:
            apikeys.create_key(organization, "k", allowed_networks=["not-a-network"])
        assert "allowed_networks" in raised.value.errors
        rotated = apikeys.rotate_key(created.api_key.id)
        assert rotated.api_key.allowed_networks == ["203.0.113.0/24"]


def test_client_address_and_matching_helpers() -> None:
    environ = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "1.2.3.4, 5.6.7.8"}
    assert client_address(environ, 0) == "10.0.0.1"
    assert client_address(environ, 1) == "5.6.7.8"
    assert client_address(environ, 2) == "1.2.3.4"
    assert client_address(environ, 3) == "10.0.0.1"
    networks = tuple(ipaddress.ip_network(network) for network in parse_networks(NETWORKS))
    assert not address_allowed("garbage", networks)
    assert address_allowed("fe80::1%eth0", (ipaddress.ip_network("fe80::/10"),))
