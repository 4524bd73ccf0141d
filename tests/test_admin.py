"""The admin HTTP API: every route, who may call it, bad input, and what it never shows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys
from flask_apikeys.config import ConfigError
from flask_apikeys.models import APIKey, AuditRecord, Organization

from .factory import create_app
from .helpers import assert_problem

ADMIN_KEY = "bootstrap-" + "a" * 32
TODAY = date.today()
USAGE_WINDOW = f"start={TODAY - timedelta(days=31)}&end={TODAY + timedelta(days=2)}"


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_ADMIN_KEY": ADMIN_KEY, "APIKEYS_USAGE_MODE": "sync"}


@dataclass
class World:
    """Two organizations; in A an admin key and an ordinary key; in each a key to act on."""

    org_a: str
    org_b: str
    admin_a: str
    ordinary_a: str
    key_in: dict[str, str]


@pytest.fixture
def world(app: Flask, apikeys: APIKeys) -> World:
    with app.app_context():
        org_a = apikeys.create_organization(name="Org A", email="a@a.io", plan="enterprise")
        org_b = apikeys.create_organization(name="Org B", email="b@b.io", plan="enterprise")
        admin_a = apikeys.create_key(org_a, "A admin", scopes=["admin"]).key
        ordinary_a = apikeys.create_key(org_a, "A reader", scopes=["presentations:read"]).key
        key_in = {
            str(org.id): str(apikeys.create_key(org, "target").api_key.id) for org in (org_a, org_b)
        }
        return World(str(org_a.id), str(org_b.id), admin_a, ordinary_a, key_in)


def headers(key: str | None) -> dict[str, str]:
    return {} if key is None else {"X-API-Key": key}


def fresh_key(app: Flask, apikeys: APIKeys, org_id: str) -> str:
    with app.app_context():
        return str(apikeys.create_key(org_id, "victim").api_key.id)


def count(app: Flask, model: type) -> int:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


# -- the authorization matrix --------------------------------------------------------------------

CALLERS = ("bootstrap", "org_admin", "ordinary", "none")


def caller_key(world: World, caller: str) -> str | None:
    return {
        "bootstrap": ADMIN_KEY,
        "org_admin": world.admin_a,
        "ordinary": world.ordinary_a,
        "none": None,
    }[caller]


def route_cases(
    app: Flask, apikeys: APIKeys, world: World, target: str
) -> list[tuple[str, str, Any]]:
    """Every route against organization ``target``: (method, path, JSON body)."""
    base = f"/admin/organizations/{target}"
    key = world.key_in[target]
    return [
        ("GET", f"{base}", None),
        ("PUT", f"{base}", {"name": "Renamed"}),
        ("POST", f"{base}/keys", {"name": "made over HTTP"}),
        ("GET", f"{base}/keys", None),
        ("GET", f"{base}/keys/{key}", None),
        ("PATCH", f"{base}/keys/{key}", {"description": "changed"}),
        ("DELETE", f"{base}/keys/{fresh_key(app, apikeys, target)}", {"reason": "test"}),
        ("POST", f"{base}/keys/{fresh_key(app, apikeys, target)}/rotate", {"overlap_hours": 0}),
        ("GET", f"{base}/usage?{USAGE_WINDOW}", None),
    ]


def expected_status(caller: str, method: str, path: str, own: bool) -> int:
    if caller == "none":
        return 401
    if caller == "ordinary":
        return 403
    if caller == "org_admin" and not own:
        return 404
    return 201 if method == "POST" else 200


@pytest.mark.parametrize("caller", CALLERS)
def test_every_route_answers_each_caller_as_the_matrix_says(
    app: Flask, apikeys: APIKeys, client: FlaskClient, world: World, caller: str
) -> None:
    key = caller_key(world, caller)
    for target, own in ((world.org_a, True), (world.org_b, False)):
        other_org_slug = "org-b" if own else "org-a"
        for method, path, body in route_cases(app, apikeys, world, target):
            response = client.open(path, method=method, json=body, headers=headers(key))
            expected = expected_status(caller, method, path, own)
            assert response.status_code == expected, (caller, method, path, response.json)
            if expected >= 400:
                assert response.content_type == "application/problem+json"
                assert "Org B" not in response.text and "b@b.io" not in response.text
            elif caller == "org_admin":
                assert other_org_slug not in response.text, (method, path)


@pytest.mark.parametrize("caller", CALLERS)
def test_organization_routes_without_a_target_answer_each_caller(
    client: FlaskClient, world: World, caller: str
) -> None:
    key = caller_key(world, caller)
    created = client.post(
        "/admin/organizations", json={"name": "New", "email": "n@n.io"}, headers=headers(key)
    )
    listed = client.get("/admin/organizations", headers=headers(key))
    expected = {"bootstrap": (201, 200), "org_admin": (403, 200), "ordinary": (403, 403)}
    assert (created.status_code, listed.status_code) == expected.get(caller, (401, 401))
    if caller == "bootstrap":
        assert {item["slug"] for item in listed.json["items"]} == {"org-a", "org-b", "new"}
        assert listed.json["total"] == 3
    if caller == "org_admin":
        assert [item["id"] for item in listed.json["items"]] == [world.org_a]
        assert listed.json["total"] == 1
    if caller == "ordinary":
        assert listed.json["code"] == "insufficient_scope"


def test_the_bootstrap_key_opens_the_admin_api_only(client: FlaskClient) -> None:
    refused = client.get("/v1/whoami", headers=headers(ADMIN_KEY))
    assert refused.status_code == 401
    assert client.get("/admin/organizations", headers=headers(ADMIN_KEY)).status_code == 200


def test_a_wrong_bootstrap_key_is_refused_like_any_unknown_key(client: FlaskClient) -> None:
    response = client.get("/admin/organizations", headers=headers(ADMIN_KEY[:-1] + "b"))
    assert response.status_code == 401
    assert response.json["code"] == "invalid_api_key"


def test_an_organization_admin_cannot_change_what_its_organization_pays_for(
    client: FlaskClient, world: World
) -> None:
    path = f"/admin/organizations/{world.org_a}"
    for change in ({"plan": "free"}, {"is_active": False}, {"max_api_keys": 1000}):
        response = client.put(path, json=change, headers=headers(world.admin_a))
        assert response.status_code == 403, change
        assert response.json["code"] == "insufficient_scope"
    renamed = client.put(path, json={"email": "ops@a.io"}, headers=headers(world.admin_a))
    assert renamed.status_code == 200 and renamed.json["email"] == "ops@a.io"
    assert client.get(path, headers=headers(world.admin_a)).json["plan"] == "enterprise"


def test_an_organization_admin_cannot_grant_more_than_it_has(
    app: Flask, apikeys: APIKeys, client: FlaskClient, world: World
) -> None:
    with app.app_context():
        narrow_admin = apikeys.create_key(world.org_a, "narrow", scopes=["admin", "a:read"]).key
    path = f"/admin/organizations/{world.org_a}/keys"
    granted = client.post(
        path, json={"name": "ok", "scopes": ["a:read"]}, headers=headers(narrow_admin)
    )
    assert granted.status_code == 201
    refused = client.post(
        path, json={"name": "too much", "scopes": ["*"]}, headers=headers(narrow_admin)
    )
    assert refused.status_code == 403 and refused.json["code"] == "insufficient_scope"


# -- what comes back ---------------------------------------------------------------------------


def test_a_key_is_shown_in_full_once_and_never_listed(client: FlaskClient, world: World) -> None:
    base = f"/admin/organizations/{world.org_a}/keys"
    created = client.post(
        base, json={"name": "Prod", "scopes": ["x:read"]}, headers=headers(ADMIN_KEY)
    )
    assert created.status_code == 201
    secret = created.json["key"]
    assert secret.startswith("pk_live_") and created.json["hint"] == secret[-4:]
    assert created.headers["Cache-Control"] == "no-store"
    shown = client.get(created.headers["Location"], headers=headers(ADMIN_KEY))
    listed = client.get(base, headers=headers(ADMIN_KEY))
    for response in (shown, listed):
        assert response.status_code == 200
        assert secret not in response.text and secret[8:-4] not in response.text
        assert '"key"' not in response.text and "hash" not in response.text
    assert client.get("/v1/whoami", headers=headers(secret)).json["org"] == "org-a"


def test_lists_are_paginated_with_their_total(client: FlaskClient, world: World) -> None:
    base = f"/admin/organizations/{world.org_a}/keys"
    for number in range(5):
        client.post(base, json={"name": f"k{number}"}, headers=headers(ADMIN_KEY))
    pages = [
        client.get(f"{base}?limit=3&offset={offset}", headers=headers(ADMIN_KEY)).json
        for offset in (0, 3, 6)
    ]
    ids = [item["id"] for page in pages for item in page["items"]]
    assert [page["total"] for page in pages] == [8, 8, 8]  # 5 new + admin, reader, target
    assert [len(page["items"]) for page in pages] == [3, 3, 2]
    assert len(set(ids)) == 8
    too_big = client.get(f"{base}?limit=501", headers=headers(ADMIN_KEY))
    assert too_big.status_code == 422 and "limit" in too_big.json["errors"]


def test_revoke_and_rotate_over_http(client: FlaskClient, world: World) -> None:
    base = f"/admin/organizations/{world.org_a}/keys"
    old = client.post(base, json={"name": "rotating"}, headers=headers(ADMIN_KEY)).json
    rotated = client.post(
        f"{base}/{old['id']}/rotate", json={"overlap_hours": 0}, headers=headers(world.admin_a)
    )
    assert rotated.status_code == 201 and rotated.json["replaces"] == old["id"]
    assert client.get("/v1/whoami", headers=headers(old["key"])).status_code == 401
    assert client.get("/v1/whoami", headers=headers(rotated.json["key"])).status_code == 200
    again = client.post(f"{base}/{old['id']}/rotate", headers=headers(ADMIN_KEY))
    assert again.status_code == 409

    new_id = rotated.json["id"]
    revoked = client.delete(
        f"{base}/{new_id}", json={"reason": "leaked"}, headers=headers(world.admin_a)
    )
    assert revoked.status_code == 200
    assert revoked.json["revoked_reason"] == "leaked"
    assert (
        revoked.json["revoked_by"]
        == f"api-key:{client.get('/v1/whoami', headers=headers(world.admin_a)).json['key']}"
    )
    assert client.get("/v1/whoami", headers=headers(rotated.json["key"])).status_code == 401
    assert client.delete(f"{base}/{new_id}", headers=headers(ADMIN_KEY)).status_code == 409


def test_usage_over_http_counts_the_requests_made(client: FlaskClient, world: World) -> None:
    for _ in range(3):
        client.get("/v1/presentations", headers=headers(world.ordinary_a))
    client.post("/v1/presentations", headers=headers(world.ordinary_a))  # 403: an error
    response = client.get(
        f"/admin/organizations/{world.org_a}/usage?{USAGE_WINDOW}", headers=headers(ADMIN_KEY)
    )
    assert response.status_code == 200
    by_endpoint = {(row["method"], row["endpoint"]): row for row in response.json["by_endpoint"]}
    assert by_endpoint[("GET", "/v1/presentations")]["requests"] == 3
    assert by_endpoint[("POST", "/v1/presentations")]["errors"] == 1
    assert response.json["total_requests"] == 4 and response.json["errors"] == 1
    other = client.get(
        f"/admin/organizations/{world.org_b}/usage?{USAGE_WINDOW}", headers=headers(ADMIN_KEY)
    )
    assert other.json["total_requests"] == 0


def test_usage_of_one_key_counts_only_that_keys_requests(client: FlaskClient, world: World) -> None:
    reader_id = client.get("/v1/whoami", headers=headers(world.ordinary_a)).json["key"]
    for _ in range(3):
        client.get("/v1/presentations", headers=headers(world.ordinary_a))
    client.get("/v1/presentations", headers=headers(world.admin_a))
    base = f"/admin/organizations/{world.org_a}/usage?{USAGE_WINDOW}"
    one_key = client.get(f"{base}&key_id={reader_id}", headers=headers(ADMIN_KEY))
    everything = client.get(base, headers=headers(ADMIN_KEY))
    assert one_key.status_code == 200 and one_key.json["total_requests"] == 4  # with whoami
    assert everything.json["total_requests"] == 5
    foreign = client.get(f"{base}&key_id={world.key_in[world.org_b]}", headers=headers(ADMIN_KEY))
    assert foreign.status_code == 404


# -- bad input -----------------------------------------------------------------------------------

BAD_ORGANIZATIONS = [
    ({"name": 5, "email": "x@x.io"}, "name"),
    ({"name": "X", "email": "not-an-email"}, "email"),
    ({"name": "X", "email": "x@x.io", "plan": "platinum"}, "plan"),
    ({"name": "X", "email": "x@x.io", "colour": "red"}, "colour"),
    ({"name": "X", "email": "x@x.io", "max_api_keys": -1}, "max_api_keys"),
    ({"name": "X", "email": "x@x.io", "rate_limit_per_minute": "many"}, "rate_limit_per_minute"),
    ({"email": "x@x.io"}, "name"),
]


def test_a_bad_organization_is_refused_naming_the_field(
    app: Flask, client: FlaskClient, world: World
) -> None:
    before = count(app, Organization)
    for body, field in BAD_ORGANIZATIONS:
        response = client.post("/admin/organizations", json=body, headers=headers(ADMIN_KEY))
        assert response.status_code == 422, body
        assert response.json["code"] == "invalid_input"
        assert field in response.json["errors"], (body, response.json)
    assert count(app, Organization) == before


BAD_KEYS = [
    ({"name": "k", "rate_limit": "5 per fortnight"}, "rate_limit"),
    ({"name": "k", "scopes": "not-a-list"}, "scopes"),
    ({"name": "k", "environment": "staging"}, "environment"),
    ({"name": "k", "expires_at": "tomorrow"}, "expires_at"),
    ({"name": "k", "expires_at": "2000-01-01T00:00:00+00:00"}, "expires_at"),
    ({"name": "k", "expires_in_days": 3, "expires_at": "2100-01-01T00:00:00+00:00"}, "expires_at"),
    ({"name": "k", "allowed_networks": ["300.1.1.1/8"]}, "allowed_networks"),
    ({"name": "k", "level": "root"}, "level"),
    ({"name": "k", "roles": ["no-such-role"]}, "roles"),
    ({"name": ""}, "name"),
]


def test_a_bad_key_is_refused_naming_the_field(
    app: Flask, client: FlaskClient, world: World
) -> None:
    before = count(app, APIKey)
    for body, field in BAD_KEYS:
        response = client.post(
            f"/admin/organizations/{world.org_a}/keys", json=body, headers=headers(ADMIN_KEY)
        )
        assert response.status_code == 422, (body, response.json)
        assert field in response.json["errors"], (body, response.json)
    assert count(app, APIKey) == before


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("start=2026-13-01&end=2027-01-01", "start"),
        ("start=2026-01-01", "end"),
        ("start=2026-02-01&end=2026-01-01", "end"),
        (f"{USAGE_WINDOW}&key_id=zzz", "key_id"),
    ],
)
def test_a_bad_usage_window_is_refused_naming_the_field(
    client: FlaskClient, world: World, query: str, field: str
) -> None:
    response = client.get(
        f"/admin/organizations/{world.org_a}/usage?{query}", headers=headers(ADMIN_KEY)
    )
    assert response.status_code == 422 and field in response.json["errors"]


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"text"', "\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_refused(
    app: Flask, client: FlaskClient, world: World, body: str
) -> None:
    before = count(app, Organization)
    response = client.post(
        "/admin/organizations",
        data=body.encode("latin-1"),
        headers={**headers(ADMIN_KEY), "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422)
    assert response.json["code"] in ("invalid_json", "invalid_input")
    assert count(app, Organization) == before


@pytest.mark.parametrize(
    "path",
    [
        f"/admin/organizations/{uuid.uuid4()}",
        "/admin/organizations/no-such-slug/keys",
        "/admin/organizations/{org}/keys/" + str(uuid.uuid4()),
        "/admin/organizations/{org}/keys/not-an-id",
        "/admin/organizations/{other_key}/keys",
    ],
)
def test_unknown_ids_answer_404(client: FlaskClient, world: World, path: str) -> None:
    path = path.format(org=world.org_a, other_key=world.key_in[world.org_a])
    response = client.get(path, headers=headers(ADMIN_KEY))
    assert response.status_code == 404
    assert response.json["code"] in ("organization_not_found", "api_key_not_found")


def test_another_organizations_key_is_not_found_through_ones_own(
    client: FlaskClient, world: World
) -> None:
    path = f"/admin/organizations/{world.org_a}/keys/{world.key_in[world.org_b]}"
    for method in ("GET", "PATCH", "DELETE"):
        response = client.open(path, method=method, json={}, headers=headers(world.admin_a))
        assert response.status_code == 404, method
        response = client.open(path, method=method, json={}, headers=headers(ADMIN_KEY))
        assert response.status_code == 404, method


def test_a_key_in_the_url_is_refused_on_the_admin_api_too(client: FlaskClient) -> None:
    response = client.get(f"/admin/organizations?api_key={ADMIN_KEY}")
    assert response.status_code == 400 and response.json["code"] == "api_key_in_url"


# -- audit ---------------------------------------------------------------------------------------


def test_admin_actions_land_in_the_audit_trail_with_who_did_them(
    app: Flask, apikeys: APIKeys, client: FlaskClient, world: World
) -> None:
    created = client.post(
        "/admin/organizations",
        json={"name": "Audited", "email": "x@x.io"},
        headers=headers(ADMIN_KEY),
    )
    key = client.post(
        f"/admin/organizations/{world.org_a}/keys",
        json={"name": "k"},
        headers=headers(world.admin_a),
    ).json
    client.delete(
        f"/admin/organizations/{world.org_a}/keys/{key['id']}", headers=headers(world.admin_a)
    )
    with app.app_context():
        admin_a_id = str(apikeys.verify_key(world.admin_a).id)
        session = app.extensions["sqlalchemy"].session
        rows = session.scalars(sa.select(AuditRecord).order_by(AuditRecord.id)).all()
        trail = [(row.event, row.actor) for row in rows]
        assert ("organization.created", "bootstrap-admin-key") in trail
        assert ("key.created", f"api-key:{admin_a_id}") in trail
        assert ("key.revoked", f"api-key:{admin_a_id}") in trail
        created_row = next(
            row
            for row in rows
            if row.event == "organization.created"
            and str(row.organization_id) == created.json["id"]
        )
        assert created_row.actor == "bootstrap-admin-key"
        assert apikeys.verify_audit() is None
        text = json.dumps([row.details for row in rows])
        assert key["key"] not in text and ADMIN_KEY not in text


# -- configuration -------------------------------------------------------------------------------


def test_a_short_bootstrap_key_stops_the_app_at_start(database_url: str) -> None:
    with pytest.raises(ConfigError, match="APIKEYS_ADMIN_KEY"):
        create_app(database_url, APIKEYS_ADMIN_KEY="short")


def test_the_bootstrap_key_is_not_kept_in_the_settings(app: Flask) -> None:
    settings = app.extensions["apikeys"].settings
    assert ADMIN_KEY not in repr(settings)
    assert ADMIN_KEY not in repr(vars(settings) if hasattr(settings, "__dict__") else settings)


def test_an_empty_prefix_mounts_no_admin_api(make_app: Callable[..., Flask]) -> None:
    app = make_app(APIKEYS_ADMIN_URL_PREFIX="", APIKEYS_ADMIN_KEY=ADMIN_KEY)
    response = app.test_client().get("/admin/organizations", headers=headers(ADMIN_KEY))
    assert response.status_code == 401  # the app's own hook: no admin routes, no bootstrap key
    assert "apikeys_admin" not in app.blueprints


def test_the_admin_api_mounts_where_configured(make_app: Callable[..., Flask]) -> None:
    app = make_app(APIKEYS_ADMIN_URL_PREFIX="/ops/keys/", APIKEYS_ADMIN_KEY=ADMIN_KEY)
    client = app.test_client()
    assert client.get("/ops/keys/organizations", headers=headers(ADMIN_KEY)).status_code == 200
    assert client.get("/ops/keys/openapi.json").json["servers"] == [{"url": "/ops/keys"}]


def test_the_service_is_untouched_by_a_refused_call(
    app: Flask, client: FlaskClient, world: World
) -> None:
    """A 403 for an ordinary key happens before anything is read or written."""
    before = (count(app, Organization), count(app, APIKey))
    for method, path in (
        ("POST", "/admin/organizations"),
        ("POST", f"/admin/organizations/{world.org_a}/keys"),
    ):
        response = client.open(
            path,
            method=method,
            json={"name": "x", "email": "x@x.io"},
            headers=headers(world.ordinary_a),
        )
        assert response.status_code == 403
    assert (count(app, Organization), count(app, APIKey)) == before


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ({"level": "admin"}, True),
        ({"scopes": ["*"]}, True),
        ({"level": "read-write"}, False),
        ({"level": "read-only"}, False),
        ({"scopes": ["presentations:*"]}, False),
    ],
)
def test_the_admin_level_opens_the_admin_api_for_its_own_organization(
    app: Flask,
    apikeys: APIKeys,
    client: FlaskClient,
    world: World,
    options: dict[str, Any],
    allowed: bool,
) -> None:
    with app.app_context():
        key = apikeys.create_key(world.org_a, "levelled", **options).key
    own = client.get(f"/admin/organizations/{world.org_a}/keys", headers=headers(key))
    other = client.get(f"/admin/organizations/{world.org_b}/keys", headers=headers(key))
    if allowed:
        assert (own.status_code, other.status_code) == (200, 404)
        assert {"level", "roles", "scopes"} <= own.json["items"][0].keys()
    else:
        assert (own.status_code, other.status_code) == (403, 403)
        assert own.json["code"] == "insufficient_scope"


def test_usage_without_a_period_reports_the_current_month_in_utc(
    client: FlaskClient, world: World
) -> None:
    for _ in range(2):
        client.get("/v1/presentations", headers=headers(world.ordinary_a))
    response = client.get(f"/admin/organizations/{world.org_a}/usage", headers=headers(ADMIN_KEY))
    assert response.status_code == 200
    today = datetime.now(UTC).date()
    first = today.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    assert (response.json["start"], response.json["end"]) == (
        first.isoformat(),
        following.isoformat(),
    )
    assert response.json["total_requests"] == 2


@pytest.mark.parametrize("given", ["start", "end"])
def test_usage_with_only_one_bound_is_refused_naming_the_other(
    client: FlaskClient, world: World, given: str
) -> None:
    response = client.get(
        f"/admin/organizations/{world.org_a}/usage?{given}={TODAY}", headers=headers(ADMIN_KEY)
    )
    body = assert_problem(response, 422, "invalid_input")
    assert set(body["errors"]) == {"end" if given == "start" else "start"}


def test_the_openapi_document_declares_the_usage_period_optional(client: FlaskClient) -> None:
    document = client.get("/admin/openapi.json").json
    operation = document["paths"]["/organizations/{org_id}/usage"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    for name in ("start", "end"):
        assert not parameters[name].get("required", False)
        assert "this month" in parameters[name]["description"]
    assert "current calendar month (UTC)" in operation["summary"] + operation.get("description", "")
