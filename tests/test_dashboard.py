"""The dashboard through the Flask test client (issue 22): sign-in, session, CSRF, headers,
keys, usage, audit, and bad form input that writes nothing."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_apikeys import APIKeys
from flask_apikeys.limiting import windows
from flask_apikeys.models import APIKey, APIKeyUsage, AuditRecord, DashboardSession

PREFIX = "/dashboard"
BOOTSTRAP_KEY = "bootstrap-" + "d" * 32
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
KEY_SHOWN = re.compile(r'id="new-key" type="text" readonly value="([^"]+)"')


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {
        "APIKEYS_DASHBOARD_URL_PREFIX": PREFIX,
        "APIKEYS_ADMIN_KEY": BOOTSTRAP_KEY,
        "APIKEYS_USAGE_MODE": "sync",
        # The property tests load more pages a minute than the admin budget allows a person
        # (tests/test_attack3_dashboard.py checks that budget).
        "APIKEYS_ADMIN_RATE_LIMIT": "",
    }


@pytest.fixture
def admin_key(make_key: Callable[..., str]) -> str:
    return make_key(scopes=["admin", "presentations:read", "presentations:write"])


@pytest.fixture
def other_key_id(app: Flask, apikeys: APIKeys) -> uuid.UUID:
    """A key of another organization."""
    with app.app_context():
        other = apikeys.create_organization(name="Other", email="o@other.io", plan="pro")
        return apikeys.create_key(other, "theirs", scopes=["presentations:read"]).api_key.id


def form_token(client: FlaskClient, path: str) -> str:
    page = client.get(PREFIX + path)
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match is not None
    return match[1]


def sign_in(client: FlaskClient, key: str, organization: str = "") -> Any:
    token = form_token(client, "/sign-in")
    return client.post(
        PREFIX + "/sign-in", data={"csrf_token": token, "key": key, "organization": organization}
    )


@pytest.fixture
def signed_in(client: FlaskClient, admin_key: str) -> FlaskClient:
    response = sign_in(client, admin_key)
    assert response.status_code == 303, response.text
    return client


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post_form(client: FlaskClient, path: str, data: dict[str, str], page: str = "/keys") -> Any:
    return client.post(PREFIX + path, data={"csrf_token": form_token(client, page), **data})


def create_key(client: FlaskClient, **fields: str) -> tuple[Any, str]:
    response = post_form(client, "/keys", {"name": "made here", "environment": "test", **fields})
    assert response.status_code == 200, response.text
    match = KEY_SHOWN.search(response.text)
    assert match is not None
    return response, match[1]


def key_count(app: Flask) -> int:
    with app.app_context():
        return int(
            app.extensions["sqlalchemy"].session.scalar(sa.select(sa.func.count(APIKey.id))) or 0
        )


def audit_events(app: Flask) -> list[tuple[str, str | None]]:
    with app.app_context():
        app.extensions["apikeys"].flush_usage()
        rows = app.extensions["sqlalchemy"].session.execute(
            sa.select(AuditRecord.event, AuditRecord.actor).order_by(AuditRecord.id)
        )
        return [(row[0], row[1]) for row in rows]


def session_rows(app: Flask) -> list[DashboardSession]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        rows = list(session.scalars(sa.select(DashboardSession)))
        session.expunge_all()
        return rows


# -- configuration -----------------------------------------------------------------------------


def test_the_dashboard_is_off_unless_its_prefix_is_set(make_app: Callable[..., Flask]) -> None:
    plain = make_app()
    assert "apikeys_dashboard" not in plain.blueprints
    assert plain.test_client().get(PREFIX + "/sign-in").status_code in (401, 404)


# -- signing in --------------------------------------------------------------------------------


def test_sign_in_gives_a_strict_httponly_cookie_on_the_prefix_and_stores_only_its_hash(
    app: Flask, client: FlaskClient, admin_key: str
) -> None:
    response = sign_in(client, admin_key)
    assert response.status_code == 303
    assert response.headers["Location"].endswith(PREFIX + "/keys")
    cookie = next(
        value
        for value in response.headers.getlist("Set-Cookie")
        if value.startswith("apikeys_dashboard_session=")
    )
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert f"path={PREFIX}" in attributes and "max-age=3600" in attributes
    assert "secure" not in attributes  # plain HTTP here; HTTPS below
    token = cookie.split(";")[0].partition("=")[2]
    assert admin_key not in cookie and len(token) >= 40
    [row] = session_rows(app)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (row.token_hash, row.csrf_secret)


def test_over_https_the_cookie_is_secure(app: Flask, admin_key: str) -> None:
    client = app.test_client()
    page = client.get(PREFIX + "/sign-in", base_url="https://localhost")
    token = CSRF.search(page.text)[1]  # type: ignore[index]
    response = client.post(
        PREFIX + "/sign-in",
        data={"csrf_token": token, "key": admin_key},
        base_url="https://localhost",
    )
    assert response.status_code == 303
    cookie = next(
        value
        for value in response.headers.getlist("Set-Cookie")
        if value.startswith("apikeys_dashboard_session=")
    )
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_a_key_without_the_admin_scope_cannot_sign_in(
    app: Flask, client: FlaskClient, make_key: Callable[..., str]
) -> None:
    response = sign_in(client, make_key(scopes=["presentations:read"]))
    assert response.status_code == 403
    assert "admin scope" in response.text
    assert session_rows(app) == []


def test_a_wrong_key_is_refused_and_audited_like_an_api_refusal(
    app: Flask, client: FlaskClient, admin_key: str
) -> None:
    wrong = admin_key[:-6] + ("AAAAAA" if not admin_key.endswith("AAAAAA") else "BBBBBB")
    response = sign_in(client, wrong)
    assert response.status_code == 401
    assert wrong not in response.text
    assert ("auth.refused", None) in audit_events(app)
    assert session_rows(app) == []


@pytest.mark.parametrize("app_config", [{"APIKEYS_DASHBOARD_URL_PREFIX": PREFIX,
                                         "APIKEYS_FAILED_AUTH_LIMIT": "2/minute"}])  # fmt: skip
def test_sign_in_is_under_the_failed_attempt_block(
    app: Flask, client: FlaskClient, admin_key: str
) -> None:
    for _ in range(2):
        assert sign_in(client, "pk_live_" + "x" * 40).status_code == 401
    assert sign_in(client, "pk_live_" + "x" * 40).status_code == 429  # past the limit
    blocked = sign_in(client, admin_key)  # even the right key: the address is blocked
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert session_rows(app) == []


def test_the_bootstrap_key_signs_in_to_the_organization_it_names(
    app: Flask, client: FlaskClient, organization: uuid.UUID
) -> None:
    assert sign_in(client, BOOTSTRAP_KEY).status_code == 422  # which organization?
    assert sign_in(client, BOOTSTRAP_KEY, "no-such-org").status_code == 404
    assert sign_in(client, BOOTSTRAP_KEY, "acme").status_code == 303
    page = client.get(PREFIX + "/keys")
    assert page.status_code == 200 and "Acme" in page.text
    assert ("dashboard.signed_in", "bootstrap-admin-key") in audit_events(app)


def test_replacing_the_bootstrap_key_ends_the_sessions_it_started(
    app: Flask,
    client: FlaskClient,
    organization: uuid.UUID,
    make_app: Callable[..., Flask],
    app_config: dict[str, Any],
) -> None:
    """A leaked bootstrap key is replaced (a new ``APIKEYS_ADMIN_KEY``, the app restarted):
    a session the leaked key started must end too, not only when the setting is unset."""
    assert sign_in(client, BOOTSTRAP_KEY, "acme").status_code == 303
    token = client.get_cookie("apikeys_dashboard_session", path=PREFIX)
    assert token is not None
    assert client.get(PREFIX + "/keys").status_code == 200
    restarted = make_app(**{**app_config, "APIKEYS_ADMIN_KEY": "replaced-" + "e" * 32})
    replay = restarted.test_client()
    replay.set_cookie("apikeys_dashboard_session", token.value, path=PREFIX)
    response = replay.get(PREFIX + "/keys")
    assert response.status_code == 303 and "/sign-in" in response.headers["Location"]
    # The new key signs in; a restart that keeps the key keeps its sessions.
    assert sign_in(restarted.test_client(), "replaced-" + "e" * 32, "acme").status_code == 303
    kept = make_app(**app_config).test_client()
    kept.set_cookie("apikeys_dashboard_session", token.value, path=PREFIX)
    assert kept.get(PREFIX + "/keys").status_code == 200


def test_an_access_token_shaped_value_or_an_empty_one_is_refused(
    app: Flask, client: FlaskClient
) -> None:
    assert sign_in(client, "").status_code == 401
    assert sign_in(client, "eyJhbGciOiJIUzI1NiJ9.e30.c2ln").status_code == 401
    assert session_rows(app) == []


# -- the session -------------------------------------------------------------------------------


def test_without_a_session_every_page_sends_to_sign_in(client: FlaskClient) -> None:
    for path in ("/", "/keys", "/usage", "/audit", f"/keys/{uuid.uuid4()}"):
        response = client.get(PREFIX + path)
        assert response.status_code in (302, 303), path
        assert "/sign-in" in response.headers["Location"]


def test_sign_out_ends_the_session_on_the_server(app: Flask, signed_in: FlaskClient) -> None:
    token = signed_in.get_cookie("apikeys_dashboard_session", path=PREFIX)
    assert token is not None
    response = post_form(signed_in, "/sign-out", {})
    assert response.status_code == 303 and "signed-out" in response.headers["Location"]
    assert session_rows(app) == []
    replay = app.test_client()
    replay.set_cookie("apikeys_dashboard_session", token.value, path=PREFIX)
    assert replay.get(PREFIX + "/keys").status_code == 303


def test_an_expired_session_ends(app: Flask, signed_in: FlaskClient) -> None:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(
            sa.update(DashboardSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
    response = signed_in.get(PREFIX + "/keys")
    assert response.status_code == 303 and "session-ended" in response.headers["Location"]
    assert session_rows(app) == []


def test_a_sign_in_deletes_sessions_that_expired_unseen(
    app: Flask, signed_in: FlaskClient, admin_key: str
) -> None:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(
            sa.update(DashboardSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()
    assert sign_in(app.test_client(), admin_key).status_code == 303
    [row] = session_rows(app)
    assert row.expires_at > datetime.now(UTC)


def test_revoking_the_admin_key_ends_its_sessions_on_the_next_request(
    app: Flask, apikeys: APIKeys, signed_in: FlaskClient
) -> None:
    assert signed_in.get(PREFIX + "/keys").status_code == 200
    [row] = session_rows(app)
    with app.app_context():
        apikeys.revoke_key(row.api_key_id, reason="left the company")  # type: ignore[arg-type]
    assert signed_in.get(PREFIX + "/keys").status_code == 303
    assert session_rows(app) == []


def test_rotating_the_admin_key_away_ends_its_sessions(
    app: Flask, apikeys: APIKeys, signed_in: FlaskClient
) -> None:
    [row] = session_rows(app)
    with app.app_context():
        apikeys.rotate_key(row.api_key_id, overlap_hours=0)  # type: ignore[arg-type]
    assert signed_in.get(PREFIX + "/usage").status_code == 303


# -- headers and CSRF --------------------------------------------------------------------------


def test_every_page_sends_the_security_headers_and_has_no_inline_script_or_style(
    signed_in: FlaskClient, admin_key: str
) -> None:
    for path in ("/sign-in", "/keys", "/usage", "/audit"):
        response = signed_in.get(PREFIX + path, follow_redirects=True)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None, path
        assert " style=" not in response.text and "<style" not in response.text, path
        assert admin_key not in response.text


def test_a_form_without_the_session_token_is_refused_and_writes_nothing(
    app: Flask, signed_in: FlaskClient
) -> None:
    before = key_count(app)
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
        response = signed_in.post(PREFIX + "/keys", data={"name": "csrf", **data})
        assert response.status_code == 403
    assert key_count(app) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "null"},
    ],
)
def test_a_form_posted_from_another_site_is_refused(
    app: Flask, signed_in: FlaskClient, headers: dict[str, str]
) -> None:
    before = key_count(app)
    token = form_token(signed_in, "/keys")
    response = signed_in.post(
        PREFIX + "/keys", data={"csrf_token": token, "name": "x"}, headers=headers
    )
    assert response.status_code == 403
    assert key_count(app) == before


@pytest.mark.parametrize(
    "headers", [{"Sec-Fetch-Site": "same-origin", "Origin": "null"}, {"Origin": "null"}]
)
def test_a_form_from_the_dashboard_itself_is_accepted(
    app: Flask, signed_in: FlaskClient, headers: dict[str, str]
) -> None:
    """With ``Referrer-Policy: no-referrer`` browsers send ``Origin: null`` on our own forms."""
    token = form_token(signed_in, "/keys")
    response = signed_in.post(
        PREFIX + "/keys", data={"csrf_token": token, "name": "ours"}, headers=headers
    )
    assert response.status_code == 200 and "Key created" in response.text


def test_the_sign_in_form_needs_its_own_token(app: Flask, admin_key: str) -> None:
    client = app.test_client()
    response = client.post(PREFIX + "/sign-in", data={"key": admin_key})
    assert response.status_code == 403
    assert session_rows(app) == []


def test_another_organizations_ids_answer_404(
    app: Flask, apikeys: APIKeys, signed_in: FlaskClient, other_key_id: uuid.UUID
) -> None:
    assert signed_in.get(f"{PREFIX}/keys/{other_key_id}").status_code == 404
    assert signed_in.get(f"{PREFIX}/usage?key={other_key_id}").status_code == 404
    for action, data in (("", {"name": "mine now"}), ("/rotate", {}), ("/revoke", {})):
        response = post_form(signed_in, f"/keys/{other_key_id}{action}", data)
        assert response.status_code == 404, action
    with app.app_context():
        theirs = apikeys.get_key(other_key_id)
        assert theirs.name == "theirs" and theirs.revoked_at is None
        assert theirs.replaced_by_id is None


# -- keys --------------------------------------------------------------------------------------


def test_a_created_key_is_shown_once_works_and_never_appears_again(
    app: Flask, signed_in: FlaskClient, admin_key: str
) -> None:
    response, key = create_key(signed_in, scopes="presentations:read", description="for CI")
    assert response.headers["Cache-Control"] == "no-store"
    assert "You will not see it again" in response.text
    assert app.test_client().get("/v1/presentations", headers={"X-API-Key": key}).status_code == 200
    [created] = [row for row in listed_keys(app) if row.name == "made here"]
    for path in ("/keys", f"/keys/{created.id}", "/usage", "/audit"):
        page = signed_in.get(PREFIX + path)
        assert page.status_code == 200
        assert key not in page.text and key[-20:] not in page.text, path
        assert admin_key not in page.text
    assert created.scopes == ["presentations:read"] and created.description == "for CI"
    assert ("key.created", f"api-key:{admin_id(app)}") in audit_events(app)


def listed_keys(app: Flask) -> list[APIKey]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        rows = list(session.scalars(sa.select(APIKey)))
        session.expunge_all()
        return rows


def admin_id(app: Flask) -> uuid.UUID:
    [row] = session_rows(app)
    assert row.api_key_id is not None
    return row.api_key_id


def test_the_keys_page_lists_status_prefix_hint_and_grants(
    app: Flask, apikeys: APIKeys, signed_in: FlaskClient, organization: uuid.UUID
) -> None:
    with app.app_context():
        soon = apikeys.create_key(organization, "soon", expires_in_days=2, level="read-only")
        shown = f"{soon.api_key.key_prefix}…{soon.api_key.key_hint}"
        old = apikeys.create_key(organization, "old")
        apikeys.rotate_key(old.api_key.id, overlap_hours=5)
        gone = apikeys.create_key(organization, "gone")
        apikeys.revoke_key(gone.api_key.id, reason="test")
    page = signed_in.get(PREFIX + "/keys").text
    for status in ("active", "expiring", "in overlap", "revoked"):
        assert f">{status}</span>" in page
    assert shown in page
    assert "level read-only" in page


def test_rotate_and_revoke_go_through_the_service_with_the_admin_as_actor(
    app: Flask, apikeys: APIKeys, signed_in: FlaskClient
) -> None:
    _, key = create_key(signed_in, scopes="presentations:read")
    [made] = [row for row in listed_keys(app) if row.name == "made here"]
    page = f"/keys/{made.id}"
    rotated = post_form(signed_in, f"{page}/rotate", {"overlap_hours": "0"}, page)
    assert rotated.status_code == 200 and rotated.headers["Cache-Control"] == "no-store"
    new_key = KEY_SHOWN.search(rotated.text)[1]  # type: ignore[index]
    api = app.test_client()
    assert api.get("/v1/presentations", headers={"X-API-Key": key}).status_code == 401
    assert api.get("/v1/presentations", headers={"X-API-Key": new_key}).status_code == 200
    [new] = [row for row in listed_keys(app) if row.name == "made here" and row.id != made.id]
    new_page = f"/keys/{new.id}"
    revoked = post_form(signed_in, f"{new_page}/revoke", {"reason": "no longer used"}, new_page)
    assert revoked.status_code == 303 and "notice=revoked" in revoked.headers["Location"]
    assert api.get("/v1/presentations", headers={"X-API-Key": new_key}).status_code == 401
    with app.app_context():
        record = apikeys.get_key(new.id)
        assert record.revoked_reason == "no longer used"
        assert record.revoked_by == f"api-key:{admin_id(app)}"
    events = audit_events(app)
    assert ("key.rotated", f"api-key:{admin_id(app)}") in events
    assert ("key.revoked", f"api-key:{admin_id(app)}") in events


def test_editing_a_key_changes_it_and_scopes_beyond_the_admins_are_refused(
    app: Flask, signed_in: FlaskClient
) -> None:
    create_key(signed_in, scopes="presentations:read")
    [made] = [row for row in listed_keys(app) if row.name == "made here"]
    page = f"/keys/{made.id}"
    saved = post_form(
        signed_in,
        page,
        {"name": "renamed", "description": "d", "scopes": "presentations:write"},
        page,
    )
    assert saved.status_code == 303
    refused = post_form(signed_in, page, {"name": "x", "scopes": "outline:generate"}, page)
    assert refused.status_code == 403
    [after] = [row for row in listed_keys(app) if row.id == made.id]
    assert after.name == "renamed" and after.scopes == ["presentations:write"]
    before = key_count(app)
    escalation = post_form(signed_in, "/keys", {"name": "wider", "scopes": "*"})
    assert escalation.status_code == 403 and key_count(app) == before
    assert ("key.updated", f"api-key:{admin_id(app)}") in audit_events(app)


# -- usage and audit ---------------------------------------------------------------------------


def test_the_usage_page_shows_limits_requests_and_charts(
    app: Flask, signed_in: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows, "now", lambda: 1_800_000_030.0)  # mid-minute, held still
    _, key = create_key(signed_in, scopes="presentations:read")
    api = app.test_client()
    for _ in range(3):
        assert api.get("/v1/presentations", headers={"X-API-Key": key}).status_code == 200
    assert api.post("/v1/presentations", headers={"X-API-Key": key}).status_code == 403
    page = signed_in.get(PREFIX + "/usage")
    assert page.status_code == 200
    text = page.text
    # The endpoint chart's description; the sign-in was an authenticated request too.
    assert "GET /v1/presentations 3, POST /dashboard/sign-in 1, POST /v1/presentations 1" in text
    assert "2xx 3, 3xx 1, 4xx 1" in text
    assert text.count('<svg class="chart"') == 4
    # The organization's rate-limit counter this minute: the four API requests above.
    assert "Requests this minute</p>" in text
    assert '<strong>4</strong> <span class="muted">of 60</span>' in text  # pro: 60 a minute
    [made] = [row for row in listed_keys(app) if row.name == "made here"]
    one_key = signed_in.get(f"{PREFIX}/usage?key={made.id}")
    assert '<p class="tile-value" id="total-requests">4</p>' in one_key.text


@pytest.mark.parametrize(
    "query",
    ["start=yesterday", "end=2026-13-01", "start=2026-02-01&end=2026-01-01",
     "start=2020-01-01&end=2026-01-01", "key=not-a-key", "start=%00"],
)  # fmt: skip
def test_a_bad_period_is_a_form_error(signed_in: FlaskClient, query: str) -> None:
    assert signed_in.get(f"{PREFIX}/usage?{query}").status_code == 422
    assert signed_in.get(f"{PREFIX}/audit?{query}").status_code == 422


def test_the_audit_page_shows_the_organizations_events_and_refusals_filtered(
    app: Flask, apikeys: APIKeys, signed_in: FlaskClient, other_key_id: uuid.UUID
) -> None:
    _, key = create_key(signed_in, scopes="presentations:read")
    [made] = [row for row in listed_keys(app) if row.name == "made here"]
    with app.app_context():
        apikeys.revoke_key(made.id, reason="leaked")
        apikeys.revoke_key(other_key_id, reason="someone else's")
    api = app.test_client()
    assert api.get("/v1/presentations", headers={"X-API-Key": key}).status_code == 401
    audit_events(app)  # flush the refused attempt
    page = signed_in.get(PREFIX + "/audit").text
    assert "key.created" in page and "key.revoked" in page and "auth.refused" in page
    assert "dashboard.signed_in" in page
    assert "someone else" not in page  # another organization's record
    refused = signed_in.get(PREFIX + "/audit?event=auth.refused").text
    assert "auth.refused" in refused and "key.created</span>" not in refused
    by_key = signed_in.get(f"{PREFIX}/audit?key={made.id}").text
    assert "key.created" in by_key and "dashboard.signed_in</span>" not in by_key
    assert signed_in.get(PREFIX + "/audit?event=nope").status_code == 422


def test_the_audit_trail_is_paged(app: Flask, apikeys: APIKeys, signed_in: FlaskClient) -> None:
    [row] = session_rows(app)
    with app.app_context():
        for number in range(55):
            apikeys.audit(
                "key.updated", actor=f"filler-{number}", organization_id=row.organization_id
            )
    first = signed_in.get(PREFIX + "/audit").text
    assert "Page 1 of 2" in first and "filler-54" in first and "filler-0<" not in first
    second = signed_in.get(PREFIX + "/audit?page=2").text
    assert "filler-0<" in second


# -- bad input ---------------------------------------------------------------------------------


def stored(app: Flask) -> tuple[Any, ...]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return tuple(
            session.execute(
                sa.select(APIKey.id, APIKey.name, APIKey.description, APIKey.scopes,
                          APIKey.revoked_at, APIKey.expires_at).order_by(APIKey.id)
            ).all()
        )  # fmt: skip


@pytest.fixture
def target_key(app: Flask, apikeys: APIKeys, organization: uuid.UUID) -> uuid.UUID:
    """A key the forms act on (not the signed-in admin's own)."""
    with app.app_context():
        return apikeys.create_key(organization, "target", scopes=["presentations:read"]).api_key.id


#: What a browser can send: any text but lone surrogates (a form is encoded as UTF-8).
form_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=300),
    st.sampled_from(["", " ", "\x00", "a" * 5000, "-1", "1e9", "NaN", "*", "admin"]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    form=st.fixed_dictionaries(
        {},
        optional={
            "name": form_text,
            "description": form_text,
            "environment": form_text,
            "scopes": form_text,
            "expires_in_days": form_text,
            "overlap_hours": form_text,
            "reason": form_text,
        },
    ),
    action=st.sampled_from(["create", "edit", "rotate", "revoke"]),
)
def test_any_form_input_is_a_page_or_a_4xx_form_error_that_writes_nothing(
    app: Flask, signed_in: FlaskClient, target_key: uuid.UUID, form: dict[str, str], action: str
) -> None:
    path = {"create": "/keys", "edit": f"/keys/{target_key}"}.get(
        action, f"/keys/{target_key}/{action}"
    )
    before = stored(app)
    response = post_form(signed_in, path, form)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert stored(app) == before
        assert 'class="error-summary"' in response.text or "<h1>" in response.text


def shown_this_month(text: str) -> int:
    match = re.search(r'Requests this month</p>\s*<p class="meter-value"><strong>([\d,]+)<', text)
    assert match is not None
    return int(match[1].replace(",", ""))


def test_this_months_count_is_the_same_whatever_period_is_shown(
    app: Flask, signed_in: FlaskClient, organization: uuid.UUID
) -> None:
    [admin] = [row for row in listed_keys(app) if row.name == "Test key"]
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    moments = [now - timedelta(seconds=5)] * 3 + [month_start - timedelta(days=20)] * 2
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(
            sa.insert(APIKeyUsage),
            [
                {
                    "api_key_id": admin.id,
                    "organization_id": organization,
                    "timestamp": moment,
                    "endpoint": "/v1/presentations",
                    "method": "GET",
                    "status_code": 200,
                    "response_time_ms": 1.0,
                }
                for moment in moments
            ],
        )
        session.commit()
        # Raw rows written behind the writer's back: into the rollups the statistics read.
        app.extensions["apikeys"].service.retention.backfill_rollups(until=now + timedelta(hours=1))
    expected = 3 + 1  # and the sign-in, a request of the admin key
    today = now.date()
    long_ago = (month_start - timedelta(days=60)).date()
    for query in (
        "",  # the last 30 days
        f"start={long_ago}&end={today}",  # the whole month and more
        f"start={long_ago}&end={long_ago + timedelta(days=5)}",  # no day of this month
        f"key={admin.id}",  # one key
    ):
        page = signed_in.get(f"{PREFIX}/usage?{query}")
        assert page.status_code == 200
        assert shown_this_month(page.text) == expected, query


def test_text_in_the_charts_is_escaped(
    app: Flask, signed_in: FlaskClient, organization: uuid.UUID
) -> None:
    """An endpoint is the app's URL rule, but the page must not trust any text it draws."""
    [admin] = [row for row in listed_keys(app) if row.name == "Test key"]
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(
            sa.insert(APIKeyUsage),
            {
                "api_key_id": admin.id,
                "organization_id": organization,
                "timestamp": datetime.now(UTC),
                "endpoint": '/v1/<script>alert("x")</script>',
                "method": "GET",
                "status_code": 200,
                "response_time_ms": 1.0,
            },
        )
        session.commit()
        later = datetime.now(UTC) + timedelta(hours=1)
        # Into the rollups.
        app.extensions["apikeys"].service.retention.backfill_rollups(until=later)
    text = signed_in.get(PREFIX + "/usage").text
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text


def test_a_big_form_is_refused_unread_before_anyone_signs_in(app: Flask) -> None:
    """The sign-in form is read before anyone is signed in: a body bigger than a form of
    the dashboard ever is gets 413 without being read."""
    from .test_oauth import CountingStream

    size = 20 * 1024 * 1024
    # Signed out, a form page sends to sign-in (303) unread as well.
    for path, status in (("/sign-in", 413), ("/keys", 303)):
        body = CountingStream(size)
        response = app.test_client().post(
            PREFIX + path,
            content_type="application/x-www-form-urlencoded",
            environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(size)},
        )
        assert response.status_code == status, (path, response.status_code)
        assert body.read_bytes < 64 * 1024
        assert response.headers["X-Frame-Options"] == "DENY"
