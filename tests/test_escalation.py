"""Nobody gets more than they hold: every path that hands out or changes a key, over HTTP.

The admin API and access tokens are not trusted (the CLI and the bootstrap key are): a key they
create, rotate or change may hold nothing its caller does not. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import example, given
from hypothesis import strategies as st

from flask_apikeys import APIKeys
from flask_apikeys.errors import InsufficientScope
from flask_apikeys.models import APIKey, AuditRecord
from flask_apikeys.permissions import scopes_beyond, within_plan
from flask_apikeys.scopes import scope_grants

ADMIN_KEY = "bootstrap-" + "e" * 32
JWT_SECRET = "a-jwt-secret-of-at-least-32-characters!"
PLANS = {
    "enterprise": {"requests_per_minute": 300, "monthly_requests": None, "max_keys": 50},
    "basic": {
        "requests_per_minute": 10,
        "monthly_requests": None,
        "max_keys": 2,
        "scopes": ["reports:read"],
    },
}
ROLES = {"superuser": ["*"], "auditor": ["reports:read"]}


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {
        "APIKEYS_ADMIN_KEY": ADMIN_KEY,
        "APIKEYS_USAGE_MODE": "sync",
        "APIKEYS_PLANS": PLANS,
        "APIKEYS_ROLES": ROLES,
        "APIKEYS_JWT_ENABLED": True,
        "APIKEYS_JWT_SECRET": JWT_SECRET,
    }


@pytest.fixture
def org_id(app: Flask, apikeys: APIKeys) -> str:
    with app.app_context():
        return str(apikeys.create_organization("Acme", "a@acme.io", "enterprise").id)


def new_key(app: Flask, apikeys: APIKeys, org_id: str, **options: Any) -> tuple[str, str]:
    """(secret, id) of a key made by the trusted Python API."""
    with app.app_context():
        created = apikeys.create_key(org_id, options.pop("name", "k"), **options)
        return created.key, str(created.api_key.id)


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key_count(app: Flask) -> int:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return int(session.scalar(sa.select(sa.func.count()).select_from(APIKey)) or 0)


def assert_refused(response: Any) -> dict[str, Any]:
    assert response.status_code == 403, response.json
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "insufficient_scope"
    assert "key" not in response.json  # never a secret in a refusal
    return response.json  # type: ignore[no-any-return]


#: Keys that hold more than a key whose only scope is ``admin``.
STRONGER_TARGETS = [
    pytest.param({"scopes": ["*"]}, id="scope-star"),
    pytest.param({"level": "admin"}, id="level-admin"),
    pytest.param({"roles": ["superuser"]}, id="role-superuser"),
    pytest.param({"scopes": ["admin", "billing:write"]}, id="extra-scope"),
    pytest.param({"rate_limit": "1000/second"}, id="higher-rate-limit"),
]


@pytest.mark.parametrize("target", STRONGER_TARGETS)
def test_an_admin_key_cannot_rotate_a_key_that_holds_more(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str, target: dict[str, Any]
) -> None:
    admin, _ = new_key(app, apikeys, org_id, scopes=["admin"])
    _, target_id = new_key(app, apikeys, org_id, **target)
    before = key_count(app)
    response = client.post(
        f"/admin/organizations/{org_id}/keys/{target_id}/rotate",
        json={"overlap_hours": 0},
        headers=auth(admin),
    )
    assert_refused(response)
    assert key_count(app) == before
    with app.app_context():
        target_row = apikeys.get_key(target_id)
        assert target_row.replaced_by_id is None and target_row.expires_at is None


@pytest.mark.parametrize("target", STRONGER_TARGETS)
def test_an_admin_key_cannot_create_a_key_that_holds_more(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str, target: dict[str, Any]
) -> None:
    admin, _ = new_key(app, apikeys, org_id, scopes=["admin"])
    before = key_count(app)
    response = client.post(
        f"/admin/organizations/{org_id}/keys", json={"name": "more", **target}, headers=auth(admin)
    )
    assert_refused(response)
    assert key_count(app) == before


@pytest.mark.parametrize("widening", STRONGER_TARGETS)
def test_an_admin_key_cannot_widen_a_key_beyond_itself(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str, widening: dict[str, Any]
) -> None:
    admin, _ = new_key(app, apikeys, org_id, scopes=["admin"])
    _, target_id = new_key(app, apikeys, org_id)  # holds nothing: only the widening may refuse
    response = client.patch(
        f"/admin/organizations/{org_id}/keys/{target_id}", json=widening, headers=auth(admin)
    )
    assert_refused(response)
    with app.app_context():
        row = apikeys.get_key(target_id)
        assert (row.scopes, row.level, row.roles, row.custom_rate_limit) == (
            [],
            None,
            [],
            None,
        )


def test_within_what_it_holds_an_admin_key_still_manages_keys(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    admin, _ = new_key(app, apikeys, org_id, scopes=["admin", "reports:*"], rate_limit="50/minute")
    base = f"/admin/organizations/{org_id}/keys"
    made = client.post(
        base,
        json={"name": "ok", "scopes": ["reports:read"], "rate_limit": "20/minute"},
        headers=auth(admin),
    )
    assert made.status_code == 201, made.json
    rotated = client.post(f"{base}/{made.json['id']}/rotate", json={}, headers=auth(admin))
    assert rotated.status_code == 201, rotated.json
    changed = client.patch(
        f"{base}/{rotated.json['id']}", json={"roles": ["auditor"]}, headers=auth(admin)
    )
    assert changed.status_code == 200 and changed.json["roles"] == ["auditor"]


def test_an_expiring_key_cannot_make_or_rotate_itself_into_a_longer_lived_key(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    admin, admin_id = new_key(app, apikeys, org_id, scopes=["admin"], expires_in_days=2)
    base = f"/admin/organizations/{org_id}/keys"
    before = key_count(app)
    for body in ({"name": "forever"}, {"name": "longer", "expires_in_days": 30}):
        assert_refused(client.post(base, json=body, headers=auth(admin)))
    assert_refused(client.post(f"{base}/{admin_id}/rotate", json={}, headers=auth(admin)))
    assert key_count(app) == before
    shorter = client.post(base, json={"name": "short", "expires_in_days": 1}, headers=auth(admin))
    assert shorter.status_code == 201, shorter.json


def test_a_network_bound_key_cannot_hand_out_a_key_usable_elsewhere(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    admin, _ = new_key(app, apikeys, org_id, scopes=["admin"], allowed_networks=["127.0.0.0/8"])
    base = f"/admin/organizations/{org_id}/keys"
    for networks in ([], ["10.0.0.0/8"], ["0.0.0.0/0"]):
        body = {"name": "wide", "allowed_networks": networks}
        assert_refused(client.post(base, json=body, headers=auth(admin)))
    inside = {"name": "inside", "allowed_networks": ["127.0.0.1/32"]}
    assert client.post(base, json=inside, headers=auth(admin)).status_code == 201


def test_a_key_inside_its_rotation_overlap_may_not_create_or_rotate(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    admin, admin_id = new_key(app, apikeys, org_id, scopes=["admin"])
    base = f"/admin/organizations/{org_id}/keys"
    successor = client.post(
        f"{base}/{admin_id}/rotate", json={"overlap_hours": 24}, headers=auth(ADMIN_KEY)
    )
    assert successor.status_code == 201
    assert client.get(base, headers=auth(admin)).status_code == 200  # still works for reading
    before = key_count(app)
    assert_refused(client.post(base, json={"name": "late"}, headers=auth(admin)))
    rotate_successor = f"{base}/{successor.json['id']}/rotate"
    assert_refused(client.post(rotate_successor, json={}, headers=auth(admin)))
    assert key_count(app) == before


# -- access tokens on the admin API --------------------------------------------------------------


def admin_token(client: FlaskClient, secret: str) -> str:
    response = client.post("/auth/token", headers=auth(secret), json={"scope": "admin"})
    assert response.status_code == 200, response.json
    return str(response.json["access_token"])


def test_an_access_token_cannot_create_rotate_or_change_credentials(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    admin, admin_id = new_key(app, apikeys, org_id, scopes=["*"])
    _, other_id = new_key(app, apikeys, org_id, scopes=["reports:read"])
    token = admin_token(client, admin)
    base = f"/admin/organizations/{org_id}"
    before = key_count(app)
    refused = [
        client.post(
            f"{base}/keys", json={"name": "minted", "scopes": ["admin"]}, headers=auth(token)
        ),
        client.post(f"{base}/keys/{admin_id}/rotate", json={}, headers=auth(token)),
        client.post(f"{base}/keys/{other_id}/rotate", json={}, headers=auth(token)),
        client.patch(f"{base}/keys/{other_id}", json={"scopes": ["admin"]}, headers=auth(token)),
        client.put(base, json={"name": "Renamed"}, headers=auth(token)),
    ]
    for response in refused:
        assert "send the API key" in assert_refused(response)["detail"]
    assert key_count(app) == before
    with app.app_context():
        assert apikeys.get_key(admin_id).replaced_by_id is None
        assert apikeys.get_key(other_id).scopes == ["reports:read"]


def test_an_access_token_may_read_and_revoke_on_the_admin_api(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    admin, _ = new_key(app, apikeys, org_id, scopes=["admin"])
    _, victim_id = new_key(app, apikeys, org_id)
    token = admin_token(client, admin)
    base = f"/admin/organizations/{org_id}"
    assert client.get(base, headers=auth(token)).status_code == 200
    assert client.get(f"{base}/keys", headers=auth(token)).status_code == 200
    assert client.delete(f"{base}/keys/{victim_id}", headers=auth(token)).status_code == 200


# -- plan changes --------------------------------------------------------------------------------


def test_a_plan_downgrade_flags_and_stops_what_keys_hold_beyond_it(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    star, star_id = new_key(app, apikeys, org_id, scopes=["*"])
    _, fast_id = new_key(app, apikeys, org_id, scopes=["reports:read"], rate_limit="100/minute")
    _, reader_id = new_key(app, apikeys, org_id, scopes=["reports:read"])
    assert client.get("/v1/presentations", headers=auth(star)).status_code == 200

    response = client.put(
        f"/admin/organizations/{org_id}", json={"plan": "basic"}, headers=auth(ADMIN_KEY)
    )
    assert response.status_code == 200, response.json
    excess = response.json["plan_excess"]
    flagged = {entry["id"]: entry for entry in excess["keys"]}
    assert set(flagged) == {star_id, fast_id}
    assert flagged[star_id]["scopes_beyond_plan"] == ["*"]
    assert flagged[fast_id]["rate_limit_beyond_plan"] == "100/minute"
    assert (excess["working_keys"], excess["max_keys"]) == (3, 2)
    assert reader_id not in flagged

    # What the plan no longer allows is not usable, and nothing more can be added.
    refused = client.get("/v1/presentations", headers=auth(star))
    assert refused.status_code == 403 and refused.json["code"] == "insufficient_scope"
    more = client.post(
        f"/admin/organizations/{org_id}/keys", json={"name": "x"}, headers=auth(ADMIN_KEY)
    )
    assert more.status_code == 409 and more.json["code"] == "key_limit_reached"
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        record = session.scalars(
            sa.select(AuditRecord).where(AuditRecord.event == "organization.updated")
        ).one()
        assert record.details["plan_excess"] == excess


def test_a_granter_revoked_since_it_was_verified_grants_nothing(
    app: Flask, apikeys: APIKeys, org_id: str
) -> None:
    """The service reads the granter's row as it is now, not the snapshot it was handed."""
    secret, admin_id = new_key(app, apikeys, org_id, scopes=["admin"])
    with app.app_context():
        granter = apikeys.verify_key(secret)
        assert granter.id == uuid.UUID(admin_id)
        apikeys.revoke_key(admin_id)
        with pytest.raises(InsufficientScope, match="revoked"):
            apikeys.create_key(org_id, "late", granted_by=granter)


# -- wildcards: what is handed out, not what is needed ----------------------------------------

SCOPES = st.one_of(
    st.just("*"),
    st.lists(st.sampled_from(["a", "b", "read", "*"]), min_size=1, max_size=3).map(":".join),
)
SCOPE_SETS = st.frozensets(SCOPES, max_size=4)


@given(held=SCOPE_SETS, handed_out=SCOPE_SETS, needed=SCOPE_SETS)
@example(held=frozenset({"*:*"}), handed_out=frozenset({"a:*"}), needed=frozenset({"a:b"}))
def test_a_scope_handed_out_never_opens_what_its_granter_cannot(
    held: frozenset[str], handed_out: frozenset[str], needed: frozenset[str]
) -> None:
    if scopes_beyond(held, handed_out):
        return  # refused
    for scope in needed:
        if scope_grants(handed_out, scope):
            assert scope_grants(held, scope), (held, handed_out, scope)


@given(key=SCOPE_SETS, plan=SCOPE_SETS, needed=SCOPE_SETS)
@example(key=frozenset({"*:*"}), plan=frozenset({"a:*"}), needed=frozenset({"a:b"}))
def test_what_the_plan_leaves_a_key_is_within_both(
    key: frozenset[str], plan: frozenset[str], needed: frozenset[str]
) -> None:
    kept = within_plan(key, plan)
    for scope in needed | key | plan:
        if scope_grants(kept, scope):
            assert scope_grants(key, scope) and scope_grants(plan, scope), (key, plan, scope)


def test_within_plan_keeps_where_wildcards_meet() -> None:
    assert within_plan(frozenset({"*:read"}), ["reports:*"]) == {"reports:read"}
    assert within_plan(frozenset({"*"}), ["reports:read"]) == {"reports:read"}
    assert within_plan(frozenset({"reports:read"}), None) == {"reports:read"}


def test_a_star_star_key_cannot_hand_out_a_resource_wildcard(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    """``*:*`` opens a view needing ``presentations:*`` literally, never ``presentations:read``."""
    star_star, _ = new_key(app, apikeys, org_id, scopes=["*:*", "admin"])
    assert client.get("/v1/presentations", headers=auth(star_star)).status_code == 403
    token = client.post("/auth/token", headers=auth(star_star), json={"scope": "presentations:*"})
    assert_refused(token)
    made = client.post(
        f"/admin/organizations/{org_id}/keys",
        json={"name": "wider", "scopes": ["presentations:*"]},
        headers=auth(star_star),
    )
    assert_refused(made)


def test_the_cli_warns_about_what_a_plan_downgrade_leaves_beyond_the_plan(
    app: Flask, apikeys: APIKeys, runner: Any, org_id: str
) -> None:
    _, star_id = new_key(app, apikeys, org_id, scopes=["*"])
    result = runner.invoke(args=["apikeys", "org", "update", "--slug", "acme", "--plan", "basic"])
    assert result.exit_code == 0, result.output
    assert "beyond the plan" in result.stderr and star_id in result.stderr


def test_a_revoked_key_cannot_be_brought_back_through_the_admin_api(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_id: str
) -> None:
    admin, _ = new_key(app, apikeys, org_id, scopes=["admin"])
    secret, key_id = new_key(app, apikeys, org_id)
    path = f"/admin/organizations/{org_id}/keys/{key_id}"
    assert client.delete(path, headers=auth(admin)).status_code == 200
    assert client.patch(path, json={"is_active": True}, headers=auth(admin)).status_code == 422
    assert client.patch(path, json={"name": "again"}, headers=auth(admin)).status_code == 409
    assert client.post(f"{path}/rotate", json={}, headers=auth(admin)).status_code == 409
    assert client.get("/v1/whoami", headers=auth(secret)).status_code == 401
