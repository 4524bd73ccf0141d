"""The third attack pass on introspection: a gateway can apply what only it can check.

The docs told gateways to apply a key's ``allowed_networks`` themselves (introspection cannot
know where the client is), but the answer never said what the networks were: through the
documented gateway, a leaked key bound to the office network worked from anywhere. Nor did it
say that a key was ``read-only``, which the API itself holds to safe methods on every route.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask import Flask

from .helpers import HS256, TOKEN_PATH, bearer, new_key
from .test_oauth import serving

DOCS_EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
INTROSPECT_PATH = "/auth/introspect"


@pytest.fixture
def app_config() -> dict[str, Any]:
    return dict(HS256)


def gateway_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "oauth_gateway", DOCS_EXAMPLES / "oauth_gateway.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_answer_names_the_keys_networks_for_keys_and_their_tokens(app: Flask) -> None:
    gateway = new_key(app, scopes=["apikeys:introspect"])
    bound = new_key(app, scopes=["reports:read"], allowed_networks=["198.51.100.0/24"])
    free = new_key(app, scopes=["reports:read"])
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "198.51.100.7"  # the token is fetched from inside
    token = client.post(TOKEN_PATH, headers=bearer(bound.secret)).get_json()["access_token"]
    for credential in (bound.secret, token):
        answer = client.post(
            INTROSPECT_PATH, headers=bearer(gateway.secret), data={"token": credential}
        ).get_json()
        assert answer["active"] is True
        assert answer["allowed_networks"] == ["198.51.100.0/24"]
    answer = client.post(
        INTROSPECT_PATH, headers=bearer(gateway.secret), data={"token": free.secret}
    ).get_json()
    assert answer["active"] is True and "allowed_networks" not in answer


def test_the_documented_gateway_refuses_a_bound_key_from_elsewhere(app: Flask) -> None:
    gateway = new_key(app, scopes=["apikeys:introspect"])
    bound = new_key(app, scopes=["reports:read"], allowed_networks=["198.51.100.0/24"])
    example = gateway_example()
    with serving(app) as base_url:
        url = base_url + INTROSPECT_PATH
        inside = example.check_credential(bound.secret, gateway.secret, url, "198.51.100.7")
        assert inside is not None and inside["client_id"] == str(bound.id)
        assert example.check_credential(bound.secret, gateway.secret, url, "203.0.113.5") is None
        # A gateway that cannot say where its client is gets no answer for a bound key.
        assert example.check_credential(bound.secret, gateway.secret, url) is None


def test_a_read_only_key_is_said_so_and_the_gateway_lets_it_only_read(app: Flask) -> None:
    gateway = new_key(app, scopes=["apikeys:introspect"])
    reader = new_key(app, scopes=["*"], level="read-only")
    example = gateway_example()
    with serving(app) as base_url:
        url = base_url + INTROSPECT_PATH
        answer = example.check_credential(reader.secret, gateway.secret, url)
        assert answer is not None and answer["level"] == "read-only"
        assert example.check_credential(reader.secret, gateway.secret, url, None, "POST") is None
