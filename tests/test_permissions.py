"""Permission levels, named roles and the no-escalation rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys
from flask_apikeys.errors import InsufficientScope, InvalidInput
from flask_apikeys.signals import key_updated

from .helpers import assert_problem

ROLES = {
    "developer": ["outline:*", "slides:*", "presentations:*"],
    "viewer": ["presentations:read"],
}
METHODS = ["get", "head", "options", "post", "put", "patch", "delete"]


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_ROLES": ROLES}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("level", ["read-only", "read-write", "admin"])
def test_each_level_against_each_method(
    client: FlaskClient, make_key: Callable[..., str], level: str, method: str
) -> None:
    key = make_key(scopes=[], level=level)
    response = getattr(client, method)("/v1/items", headers={"X-API-Key": key})
    if level == "read-only" and method not in {"get", "head", "options"}:
        body = assert_problem(response, 403, "insufficient_scope")
        assert body["level"] == "read-only"
    else:
        assert response.status_code == 200


def test_read_only_wins_over_the_views_decorators_and_narrows_wildcards(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key(scopes=["*", "outline:generate"], level="read-only")
    assert client.get("/v1/presentations", headers={"X-API-Key": key}).status_code == 200
    response = client.post("/v1/presentations", headers={"X-API-Key": key})
    assert_problem(response, 403, "insufficient_scope")
    scopes = client.get("/v1/items", headers={"X-API-Key": key}).get_json()["scopes"]
    assert scopes == ["*:read"]


def test_read_write_grants_read_and_write_scopes_but_not_others(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key(scopes=[], level="read-write")
    headers = {"X-API-Key": key}
    assert client.get("/v1/presentations", headers=headers).status_code == 200
    assert client.post("/v1/presentations", headers=headers).status_code == 201
    assert_problem(client.post("/v1/generate/outline", headers=headers), 403, "insufficient_scope")


def test_admin_level_grants_everything(client: FlaskClient, make_key: Callable[..., str]) -> None:
    headers = {"X-API-Key": make_key(scopes=[], level="admin")}
    assert client.post("/v1/generate/outline", headers=headers).status_code == 200


def test_roles_expand_to_their_scopes_with_wildcards(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    headers = {"X-API-Key": make_key(scopes=["images:read"], roles=["developer"])}
    assert client.post("/v1/generate/outline", headers=headers).status_code == 200
    assert client.get("/v1/media", headers=headers).status_code == 200
    scopes = client.get("/v1/items", headers=headers).get_json()["scopes"]
    assert scopes == ["images:read", "outline:*", "presentations:*", "slides:*"]


def test_a_roles_new_definition_applies_on_the_next_request(
    app: Flask, apikeys: APIKeys, client: FlaskClient, make_key: Callable[..., str]
) -> None:
    headers = {"X-API-Key": make_key(scopes=[], roles=["viewer"])}
    assert_problem(client.post("/v1/presentations", headers=headers), 403, "insufficient_scope")
    with app.app_context():
        apikeys.service.keys.define_role("viewer", ["presentations:*"])
    assert client.post("/v1/presentations", headers=headers).status_code == 201


def test_unknown_roles_and_levels_are_refused_at_creation(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        with pytest.raises(InvalidInput) as raised:
            apikeys.create_key(organization, "k", roles=["wizard"], level="god")
        assert set(raised.value.errors) == {"roles", "level"}
        assert "developer" in raised.value.errors["roles"][0]


def test_bad_role_configuration_stops_the_app(tmp_path: Any) -> None:
    from flask_apikeys.config import ConfigError

    from .factory import create_app

    with pytest.raises(ConfigError, match="APIKEYS_ROLES"):
        create_app(f"sqlite:///{tmp_path / 'x.sqlite'}", APIKEYS_ROLES={"dev": ["bad scope!"]})


def test_a_key_cannot_mint_a_key_with_more_than_it_has(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        granter = apikeys.verify_key(
            apikeys.create_key(organization, "org admin", scopes=["admin", "presentations:*"]).key
        )
        allowed = apikeys.create_key(
            organization, "child", scopes=["presentations:read"], granted_by=granter
        )
        assert allowed.api_key.scopes == ["presentations:read"]
        for escalation in (
            {"scopes": ["*"]},
            {"scopes": ["outline:generate"]},
            {"roles": ["developer"]},
            {"level": "read-write"},
        ):
            with pytest.raises(InsufficientScope) as raised:
                apikeys.create_key(organization, "greedy", granted_by=granter, **escalation)
            assert raised.value.extra["beyond"]
        with pytest.raises(InsufficientScope):
            apikeys.update_key(allowed.api_key.id, scopes=["*"], granted_by=granter)


class TestPlanScopes:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        plans = {
            "pro": {
                "requests_per_minute": 60,
                "monthly_requests": None,
                "max_keys": 10,
                "scopes": ["presentations:*"],
            }
        }
        return {"APIKEYS_PLANS": plans, "APIKEYS_ROLES": ROLES}

    def test_keys_stay_within_their_plans_scopes(
        self, app: Flask, apikeys: APIKeys, organization: Any
    ) -> None:
        with app.app_context():
            apikeys.create_key(organization, "ok", scopes=["presentations:write"])
            with pytest.raises(InsufficientScope, match="does not allow"):
                apikeys.create_key(organization, "too much", roles=["developer"])


def test_update_key_changes_scopes_roles_and_level_and_sends_key_updated(
    app: Flask, apikeys: APIKeys, client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key(scopes=["presentations:read"])
    events: list[tuple[str, dict[str, Any]]] = []

    def receive(sender: Flask, **details: Any) -> None:
        events.append(("key.updated", details))

    with app.app_context(), key_updated.connected_to(receive, app):
        key_id = apikeys.verify_key(key).id
        apikeys.update_key(key_id, scopes=[], roles=["developer"], level="read-only", actor="ops")
    scopes = client.get("/v1/items", headers={"X-API-Key": key}).get_json()["scopes"]
    assert scopes == ["*:read", "outline:read", "presentations:read", "slides:read"]
    assert events[-1][0] == "key.updated"
    assert events[-1][1]["changes"] == ["level", "roles", "scopes"]
    assert events[-1][1]["actor"] == "ops"


def test_rotation_keeps_roles_and_level(app: Flask, apikeys: APIKeys, organization: Any) -> None:
    with app.app_context():
        old = apikeys.create_key(organization, "k", roles=["viewer"], level="read-only")
        new = apikeys.rotate_key(old.api_key.id)
        verified = apikeys.verify_key(new.key)
        assert (verified.roles, verified.level) == (("viewer",), "read-only")
