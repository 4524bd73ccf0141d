"""The third attack pass on the dashboard: what a session and the audit page let one see.

A dashboard session is a credential made from an admin key, so it may do no more, and from
nowhere else, than the key; and an organization's audit page shows its own refused attempts,
never another organization's.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys, keys
from flask_apikeys.models import APIKey, AuditRecord

PREFIX = "/dashboard"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
OFFICE = "198.51.100.7"
ELSEWHERE = "203.0.113.99"


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    extra = getattr(request, "param", {})
    return {"APIKEYS_DASHBOARD_URL_PREFIX": PREFIX, "APIKEYS_USAGE_MODE": "sync", **extra}


def from_address(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def sign_in(client: FlaskClient, key: str) -> Any:
    page = client.get(PREFIX + "/sign-in")
    match = CSRF.search(page.text)
    assert match is not None
    return client.post(PREFIX + "/sign-in", data={"csrf_token": match[1], "key": key})


def test_a_session_of_a_key_bound_to_networks_works_only_from_them(
    app: Flask, apikeys: APIKeys
) -> None:
    """The session cookie outlived the key's ``allowed_networks``: signed in from the
    office, the same cookie opened the dashboard (and its forms) from anywhere."""
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(
            organization, "office admin", scopes=["admin"], allowed_networks=["198.51.100.0/24"]
        ).key
    office = from_address(app, OFFICE)
    assert sign_in(office, key).status_code == 303
    assert office.get(PREFIX + "/keys").status_code == 200
    cookie = office.get_cookie("apikeys_dashboard_session", path=PREFIX)
    assert cookie is not None

    elsewhere = from_address(app, ELSEWHERE)
    elsewhere.set_cookie(cookie.key, cookie.value, path=PREFIX)
    page = elsewhere.get(PREFIX + "/keys")
    assert page.status_code == 303
    assert "/sign-in" in page.headers["Location"]
    assert elsewhere.get(PREFIX + "/audit").status_code == 303
    # The key itself is refused there too, so the refusal is the key's, not the cookie's.
    assert sign_in(from_address(app, ELSEWHERE), key).status_code == 403


def audit_page_of(app: Flask, admin_key: str) -> str:
    """The audit page as the admin of ``admin_key``'s organization sees it (refusals flushed)."""
    app.extensions["apikeys"].flush_usage()
    client = app.test_client()
    assert sign_in(client, admin_key).status_code == 303
    page = client.get(PREFIX + "/audit?event=auth.refused")
    assert page.status_code == 200
    return page.text


def crafted_key(display_prefix: str) -> str:
    """A well-formed key that no one was given, starting with a real key's visible prefix:
    the checksum is public arithmetic, not a secret."""
    body = display_prefix + "Z" * (keys.SECRET_LENGTH - keys.VISIBLE_SECRET_CHARACTERS)
    return body + keys.compute_checksum(body)


def test_another_organizations_refused_attempts_are_not_shown_for_a_shared_prefix(
    app: Flask, apikeys: APIKeys, db: Any
) -> None:
    """Refused attempts were given to every organization owning a key with the attempt's
    visible prefix, four random characters (62**4 values: two tenants' keys share one by
    chance, and a tenant collects prefixes by rotating). Acme's page showed Globex's client
    address and user agent."""
    with app.app_context():
        acme = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        globex = apikeys.create_organization(name="Globex", email="g@globex.io", plan="pro")
        acme_admin = apikeys.create_key(acme, "acme admin", scopes=["admin"]).key
        globex_admin = apikeys.create_key(globex, "globex admin", scopes=["admin"]).key
        leaked = apikeys.create_key(globex, "globex old", scopes=["presentations:read"])
        globex_id, leaked_id = globex.id, leaked.api_key.id
        apikeys.revoke_key(leaked_id, reason="retired")
        # One of Acme's keys happens to share the retired key's visible prefix.
        db.session.execute(
            sa.update(APIKey)
            .where(APIKey.name == "acme admin")
            .values(key_prefix=leaked.api_key.key_prefix)
        )
        db.session.commit()
    globex_client = from_address(app, "192.0.2.55")
    refused = globex_client.get(
        "/v1/presentations",
        headers={"X-API-Key": leaked.key, "User-Agent": "globex-billing-sync/4.2"},
    )
    assert refused.status_code == 401

    assert "192.0.2.55" not in audit_page_of(app, acme_admin)
    # It is Globex's own record: its page shows it.
    assert "192.0.2.55" in audit_page_of(app, globex_admin)
    with app.app_context():
        record = db.session.scalars(
            sa.select(AuditRecord).where(AuditRecord.user_agent == "globex-billing-sync/4.2")
        ).one()
        assert (record.organization_id, record.api_key_id) == (globex_id, leaked_id)


def test_a_made_up_key_with_an_organizations_prefix_is_not_put_in_its_audit_page(
    app: Flask, apikeys: APIKeys
) -> None:
    """Anyone could write records into an organization's audit page: a well-formed key that
    does not exist, made with one of the organization's prefixes (the OAuth ``client_id``
    form), was shown as the organization's refused attempt with the sender's text in it."""
    with app.app_context():
        acme = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        created = apikeys.create_key(acme, "acme admin", scopes=["admin"])
    forged = crafted_key(created.api_key.key_prefix)
    assert keys.is_well_formed(forged)
    outsider = from_address(app, "192.0.2.66")
    assert outsider.get("/v1/presentations", headers={"X-API-Key": forged}).status_code == 401
    assert "192.0.2.66" not in audit_page_of(app, created.key)


@pytest.mark.parametrize("app_config", [{"APIKEYS_ADMIN_RATE_LIMIT": "3/minute"}], indirect=True)
def test_the_dashboard_spends_the_same_admin_budget_as_the_admin_api(
    app: Flask, apikeys: APIKeys
) -> None:
    """A signed-in key's pages and forms took nothing from its admin budget: a script holding
    the cookie created, rotated and listed keys without the ``APIKEYS_ADMIN_RATE_LIMIT`` that
    the admin API holds the same key to."""
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(organization, "admin", scopes=["admin"]).key
        organization_id = organization.id
    browser = from_address(app, OFFICE)
    assert sign_in(browser, key).status_code == 303  # one unit
    assert [browser.get(PREFIX + "/keys").status_code for _ in range(2)] == [200, 200]
    refused = browser.get(PREFIX + "/keys")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    # Signing in again (a new session row and audit record each time) is refused as well.
    assert sign_in(from_address(app, OFFICE), key).status_code == 429
    # One budget: the admin API is refused for the same key now.
    api = app.test_client().get(
        f"/admin/organizations/{organization_id}/keys", headers={"X-API-Key": key}
    )
    assert api.status_code == 429
