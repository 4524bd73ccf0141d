"""An organization can always stop a leaked key: admin API calls have their own budget.

``APIKEYS_ADMIN_RATE_LIMIT`` limits each key's admin calls; they neither take from nor wait for
the organization's per-minute limit or monthly quota, which a leaked key may be burning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys
from flask_apikeys.config import ConfigError

from .factory import create_app
from .helpers import assert_problem

ADMIN_KEY = "bootstrap-" + "d" * 32


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def organization_with_keys(app: Flask, **limits: Any) -> dict[str, str]:
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(
            name="Acme", email="a@acme.io", plan="pro", **limits
        )
        leaked = apikeys.create_key(organization, "leaked", scopes=["*"])
        return {
            "org": str(organization.id),
            "leaked": leaked.key,
            "leaked_id": str(leaked.api_key.id),
            "admin": apikeys.create_key(organization, "admin", scopes=["admin"]).key,
            "reader": apikeys.create_key(organization, "reader", scopes=["x:read"]).key,
        }


def get(client: FlaskClient, path: str, key: str) -> Any:
    return client.get(path, headers={"X-API-Key": key})


@pytest.mark.parametrize(
    "limits",
    [{"rate_limit_per_minute": 2}, {"monthly_request_limit": 2}],
    ids=["per-minute limit", "monthly quota"],
)
def test_an_admin_revokes_a_leaked_key_while_it_burns_the_organization_limit(
    make_app: Callable[..., Flask], limits: dict[str, int]
) -> None:
    app = make_app()
    keys = organization_with_keys(app, **limits)
    client = app.test_client()
    burnt = [get(client, "/v1/whoami", keys["leaked"]).status_code for _ in range(3)]
    assert burnt == [200, 200, 429]
    keys_url = f"/admin/organizations/{keys['org']}/keys"
    assert get(client, keys_url, keys["admin"]).status_code == 200
    revoked = client.delete(
        f"{keys_url}/{keys['leaked_id']}",
        headers={"X-API-Key": keys["admin"]},
        json={"reason": "leaked"},
    )
    assert revoked.status_code == 200, revoked.get_data(as_text=True)
    assert revoked.get_json()["revoked_at"] is not None
    assert_problem(get(client, "/v1/whoami", keys["leaked"]), 401, "revoked_api_key")


def test_admin_calls_do_not_take_from_the_organization_limit(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    keys = organization_with_keys(app, rate_limit_per_minute=2, monthly_request_limit=3)
    client = app.test_client()
    for _ in range(5):
        assert get(client, f"/admin/organizations/{keys['org']}", keys["admin"]).status_code == 200
        assert_problem(
            get(client, f"/admin/organizations/{keys['org']}", keys["reader"]),
            403,
            "insufficient_scope",
        )
    traffic = [get(client, "/v1/whoami", keys["leaked"]).status_code for _ in range(3)]
    assert traffic == [200, 200, 429]


def test_each_admin_key_has_its_own_admin_budget_and_the_bootstrap_key_none(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(APIKEYS_ADMIN_RATE_LIMIT="3/minute", APIKEYS_ADMIN_KEY=ADMIN_KEY)
    keys = organization_with_keys(app)
    client = app.test_client()
    path = f"/admin/organizations/{keys['org']}"
    assert [get(client, path, keys["admin"]).status_code for _ in range(3)] == [200] * 3
    body = assert_problem(get(client, path, keys["admin"]), 429, "rate_limit_exceeded")
    assert body["policy"] == "admin" and "admin API" in body["detail"]
    # A key without the admin scope cannot hammer the admin API without bound either.
    assert [get(client, path, keys["reader"]).status_code for _ in range(3)] == [403] * 3
    assert_problem(get(client, path, keys["reader"]), 429, "rate_limit_exceeded")
    # Ordinary traffic and the bootstrap key are untouched by it.
    assert get(client, "/v1/whoami", keys["admin"]).status_code == 200
    assert all(get(client, path, ADMIN_KEY).status_code == 200 for _ in range(5))


def test_admin_responses_describe_the_admin_budget(make_app: Callable[..., Flask]) -> None:
    app = make_app(APIKEYS_ADMIN_RATE_LIMIT="5/minute")
    keys = organization_with_keys(app, rate_limit_per_minute=100)
    response = get(app.test_client(), f"/admin/organizations/{keys['org']}", keys["admin"])
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "4"


def test_an_empty_admin_rate_limit_means_no_admin_budget(make_app: Callable[..., Flask]) -> None:
    app = make_app(APIKEYS_ADMIN_RATE_LIMIT="")
    keys = organization_with_keys(app)
    client = app.test_client()
    path = f"/admin/organizations/{keys['org']}"
    assert all(get(client, path, keys["admin"]).status_code == 200 for _ in range(70))


@pytest.mark.parametrize("value", ["lots", "5 per fortnight", -12])
def test_a_bad_admin_rate_limit_stops_the_app(database_url: str, value: Any) -> None:
    with pytest.raises(ConfigError, match="APIKEYS_ADMIN_RATE_LIMIT"):
        create_app(database_url, APIKEYS_ADMIN_RATE_LIMIT=value)
