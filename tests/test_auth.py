"""The before_request hook and the decorators, over real HTTP through the test client."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys
from flask_apikeys.models import APIKey

from .helpers import PROBLEM, assert_problem


@pytest.mark.parametrize(
    "headers",
    [
        lambda key: {"Authorization": f"Bearer {key}"},
        lambda key: {"Authorization": f"Api-Key {key}"},
        lambda key: {"authorization": f"bearer {key}"},
        lambda key: {"X-API-Key": key},
        lambda key: {"X-API-Key": key, "Authorization": f"Bearer {key}"},
    ],
    ids=["bearer", "api-key", "lowercase", "x-api-key", "both-same"],
)
def test_each_header_form_authenticates(
    client: FlaskClient, make_key: Callable[..., str], headers: Callable[[str], dict[str, str]]
) -> None:
    key = make_key(scopes=["presentations:read"])
    response = client.get("/v1/presentations", headers=headers(key))
    assert response.status_code == 200
    assert response.get_json()["org"] == "acme"


def test_no_key_is_401_missing_with_www_authenticate(client: FlaskClient) -> None:
    response = client.get("/v1/presentations")
    assert_problem(response, 401, "missing_api_key")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_plain_route_without_decorator_is_protected_too(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/whoami"), 401, "missing_api_key")


def test_unknown_route_asks_for_a_key_before_revealing_404(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/does-not-exist"), 401, "missing_api_key")


@pytest.mark.parametrize(
    "value",
    ["Bearer pk_live_nope", "Bearer " + "a" * 52, "Api-Key pk_test_" + "0" * 46],
)
def test_malformed_keys_are_401_invalid(client: FlaskClient, value: str) -> None:
    response = client.get("/v1/whoami", headers={"Authorization": value})
    body = assert_problem(response, 401, "invalid_api_key")
    assert "invalid_token" in response.headers["WWW-Authenticate"]
    assert "pk_" not in body["detail"]


def test_two_different_keys_are_refused(client: FlaskClient, make_key: Callable[..., str]) -> None:
    first, second = make_key(), make_key()
    response = client.get(
        "/v1/whoami", headers={"Authorization": f"Bearer {first}", "X-API-Key": second}
    )
    assert_problem(response, 401, "invalid_api_key")


def test_other_authorization_schemes_count_as_no_key(client: FlaskClient) -> None:
    response = client.get("/v1/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_problem(response, 401, "missing_api_key")


@pytest.mark.parametrize("query", ["api_key=whatever", "apikey=x", "q={key}", "X-API-Key={key}"])
def test_key_in_query_string_is_400(
    client: FlaskClient, make_key: Callable[..., str], query: str
) -> None:
    key = make_key()
    response = client.get("/v1/whoami?" + query.format(key=key), headers={"X-API-Key": key})
    body = assert_problem(response, 400, "api_key_in_url")
    assert key not in response.get_data(as_text=True) and "revoke" in body["detail"]


def test_ordinary_query_strings_pass(client: FlaskClient, make_key: Callable[..., str]) -> None:
    response = client.get("/v1/whoami?page=2&key=name", headers={"X-API-Key": make_key()})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/health", "/v1/open", "/docs", "/docs/"])
def test_public_paths_and_views_need_no_key(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in {200, 404}
    assert response.mimetype != PROBLEM


def test_public_path_prefix_does_not_leak_to_similar_paths(client: FlaskClient) -> None:
    assert_problem(client.get("/healthz"), 401, "missing_api_key")


def test_options_preflight_needs_no_key(client: FlaskClient) -> None:
    assert client.options("/v1/presentations").status_code == 200


def test_current_key_exposes_organization_scopes_and_metadata(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key(scopes=["b:read", "a:write"], metadata={"customer": "c-1"})
    body = client.get("/v1/whoami", headers={"X-API-Key": key}).get_json()
    assert body["org"] == "acme"
    assert body["scopes"] == ["a:write", "b:read"]
    assert body["metadata"] == {"customer": "c-1"}


@pytest.mark.parametrize(
    ("scopes", "method", "path", "status"),
    [
        (["presentations:read"], "get", "/v1/presentations", 200),
        (["presentations:*"], "get", "/v1/presentations", 200),
        (["*"], "post", "/v1/presentations", 201),
        (["presentations:read"], "post", "/v1/presentations", 403),
        (["slides:*"], "get", "/v1/presentations", 403),
        (["outline:generate"], "post", "/v1/generate/outline", 403),
        (["outline:generate", "presentations:write"], "post", "/v1/generate/outline", 200),
        (["outline:*", "presentations:*"], "post", "/v1/generate/outline", 200),
        (["slides:read"], "get", "/v1/media", 200),
        (["images:*"], "get", "/v1/media", 200),
        (["presentations:read"], "get", "/v1/media", 403),
        ([], "get", "/v1/presentations", 403),
    ],
)
def test_scopes_and_wildcards(
    client: FlaskClient,
    make_key: Callable[..., str],
    scopes: list[str],
    method: str,
    path: str,
    status: int,
) -> None:
    response = getattr(client, method)(path, headers={"X-API-Key": make_key(scopes=scopes)})
    assert response.status_code == status
    if status == 403:
        body = assert_problem(response, 403, "insufficient_scope")
        assert body["required_scopes"]


def test_revoked_key_is_refused_on_next_request(
    app: Flask, apikeys: APIKeys, client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key()
    assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    with app.app_context():
        key_id = apikeys.verify_key(key).id
        apikeys.revoke_key(key_id, reason="Compromised")
    assert_problem(client.get("/v1/whoami", headers={"X-API-Key": key}), 401, "revoked_api_key")


def test_expired_key_is_refused(
    app: Flask, db: Any, client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key(expires_in_days=1)
    assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    with app.app_context():
        db.session.execute(
            sa.update(APIKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.session.commit()
    app.extensions["apikeys"].cache.clear()
    assert_problem(client.get("/v1/whoami", headers={"X-API-Key": key}), 401, "expired_api_key")


def test_inactive_organization_is_403(
    app: Flask,
    apikeys: APIKeys,
    client: FlaskClient,
    make_key: Callable[..., str],
    organization: Any,
) -> None:
    key = make_key()
    with app.app_context():
        apikeys.update_organization(organization, is_active=False)
    response = client.get("/v1/whoami", headers={"X-API-Key": key})
    assert_problem(response, 403, "organization_inactive")


def test_a_key_never_reaches_another_organization(
    app: Flask, apikeys: APIKeys, client: FlaskClient, make_key: Callable[..., str]
) -> None:
    with app.app_context():
        other = apikeys.create_organization(name="Globex", email="g@globex.io", plan="pro").id
    body = client.get("/v1/whoami", headers={"X-API-Key": make_key(org=other)}).get_json()
    assert body["org"] == "globex"


class TestAllowUnauthenticated:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"APIKEYS_ALLOW_UNAUTHENTICATED": True}

    def test_no_key_passes_with_no_current_key(self, client: FlaskClient) -> None:
        assert client.get("/v1/whoami").get_json() == {"anonymous": True}

    def test_a_bad_key_is_still_refused(self, client: FlaskClient) -> None:
        response = client.get("/v1/whoami", headers={"X-API-Key": "pk_live_bad"})
        assert_problem(response, 401, "invalid_api_key")

    def test_scope_decorators_still_demand_a_key(self, client: FlaskClient) -> None:
        assert_problem(client.get("/v1/presentations"), 401, "missing_api_key")


class TestDisabled:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"APIKEYS_ENABLED": False}

    def test_nothing_is_authenticated(self, client: FlaskClient) -> None:
        assert client.get("/v1/whoami").get_json() == {"anonymous": True}
        assert client.post("/v1/presentations").status_code == 201


class TestCustomPublicPaths:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"APIKEYS_PUBLIC_PATHS": ["/v1/whoami"]}

    def test_configured_path_is_public_and_health_no_longer_is(self, client: FlaskClient) -> None:
        assert client.get("/v1/whoami").get_json() == {"anonymous": True}
        assert_problem(client.get("/health"), 401, "missing_api_key")


def test_custom_error_handler_replaces_the_problem_document(
    app: Flask, apikeys: APIKeys, client: FlaskClient
) -> None:
    @apikeys.error_handler
    def plain(error: Any) -> tuple[str, int]:
        return f"nope: {error.error_code}", error.code

    response = client.get("/v1/whoami")
    assert (response.status_code, response.get_data(as_text=True)) == (401, "nope: missing_api_key")
