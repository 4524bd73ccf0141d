"""The third attack pass on which credential a request is authenticated with.

A request is authenticated once and the outcome kept for the rest of it. Flask-Limiter's key
function (``apikeys.key_func``) runs before our hooks and authenticates the key in the
headers; a later step that verifies a key it was *given* (the dashboard's sign-in form) then
got the headers' key back, unverified against what it asked about. So a request carrying a
key in ``X-API-Key`` (a gateway's own, added to everything it forwards) and anything at all
in the sign-in form signed in as the header's key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_limiter import Limiter
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys

PREFIX = "/dashboard"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def limited_app(tmp_path: Path) -> Iterator[tuple[Flask, APIKeys]]:
    """An app whose Flask-Limiter, with our key function, runs before our own hooks."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'keys.sqlite'}",
        APIKEYS_DASHBOARD_URL_PREFIX=PREFIX,
        APIKEYS_FAILED_AUTH_LIMIT="3/minute",
    )
    db = SQLAlchemy(app)
    apikeys = APIKeys()
    limiter = Limiter(
        key_func=apikeys.key_func, storage_uri="memory://", default_limits=["1000/minute"]
    )
    limiter.init_app(app)
    apikeys.init_app(app, db=db)
    with app.app_context():
        apikeys.create_all()
    yield app, apikeys
    apikeys.close(app)


def post_sign_in(client: FlaskClient, pasted: str, header_key: str) -> int:
    page = client.get(PREFIX + "/sign-in")
    match = CSRF.search(page.text)
    assert match is not None
    response = client.post(
        PREFIX + "/sign-in",
        data={"csrf_token": match[1], "key": pasted},
        headers={"X-API-Key": header_key},
    )
    return response.status_code


def test_the_dashboard_signs_in_with_the_pasted_key_never_with_a_header_key(
    limited_app: tuple[Flask, APIKeys],
) -> None:
    app, apikeys = limited_app
    with app.app_context():
        gateway_org = apikeys.create_organization(name="Gateway", email="g@a.io", plan="pro")
        visitor_org = apikeys.create_organization(name="Visitor", email="v@a.io", plan="pro")
        gateway_key = apikeys.create_key(gateway_org, "gateway", scopes=["admin"]).key
        visitor_key = apikeys.create_key(visitor_org, "reader", scopes=["reports:read"]).key
        visitor_admin = apikeys.create_key(visitor_org, "admin", scopes=["admin"]).key
    client = app.test_client()
    # A key without the admin scope, or garbage, next to a header key: refused, not the header's.
    assert post_sign_in(client, visitor_key, gateway_key) in (401, 403)
    assert post_sign_in(client, "not a key", gateway_key) in (401, 403)
    assert client.get(PREFIX + "/keys").status_code == 303  # not signed in
    # The same key in both places is one credential: signed in.
    assert post_sign_in(client, visitor_admin, visitor_admin) == 303
    assert "Visitor" in client.get(PREFIX + "/keys").text


def test_a_refusal_about_no_credential_stands_when_a_key_function_ran_first(
    limited_app: tuple[Flask, APIKeys],
) -> None:
    """A refusal the key function made before reading any credential (a key in the URL) stays
    the answer to a client secret sent in the form: 400, not "two different keys"."""
    app, apikeys = limited_app
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@a.io", plan="pro")
        created = apikeys.create_key(organization, "admin", scopes=["admin"])
    form = {"client_id": str(created.api_key.id), "client_secret": created.key, "token": "x"}
    response = app.test_client().post(f"/auth/revoke?{created.key}", data=form)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_request"
    assert created.key not in response.get_data(as_text=True)


def test_the_oauth_metadata_built_from_the_host_is_not_kept_by_shared_caches(
    make_app: Callable[..., Flask],
) -> None:
    """The RFC 8414 document names the token endpoint by the request's host (or
    ``X-Forwarded-Host`` behind ``ProxyFix``) and was sent ``Cache-Control: public``: a CDN
    that does not key on that header kept a document naming an attacker's host for every
    client, who then sent their keys (client secrets) there."""
    app = make_app(APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_SECRET="s" * 40)
    response = app.test_client().get(
        "/.well-known/oauth-authorization-server", headers={"Host": "attacker.example"}
    )
    assert response.status_code == 200
    assert response.get_json()["token_endpoint"].startswith("http://attacker.example/")
    assert not response.cache_control.public
    assert response.cache_control.private and response.cache_control.max_age == 300
    assert "Host" in response.vary
