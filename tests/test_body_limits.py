"""A body over the app's ``MAX_CONTENT_LENGTH``: the extension's 413, in the format of the route.

Flask's ``MAX_CONTENT_LENGTH`` is the usual way an app caps bodies. Where the extension reads a
body (the admin API, the token endpoint, introspection and revocation), a body over it is a 413
that its clients can read, declared in the OpenAPI document, never werkzeug's HTML page; and
the OAuth endpoints' own, larger cap never lifts the app's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from flask import Flask
from flask.testing import FlaskClient

from .helpers import HS256, TOKEN_PATH, assert_problem, new_key
from .test_admin_openapi_clients import ADMIN_KEY, operations
from .test_oauth import INTROSPECT_PATH, REVOKE_PATH, basic, serving

APP_LIMIT = 2048
OVER = "x" * (APP_LIMIT * 2)  # over the app's cap, well under the OAuth endpoints' 16 KiB
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {**HS256, "MAX_CONTENT_LENGTH": APP_LIMIT, "APIKEYS_ADMIN_KEY": ADMIN_KEY}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/organizations"),
        ("PUT", "/admin/organizations/{org}"),
        ("POST", "/admin/organizations/{org}/keys"),
        ("PATCH", "/admin/organizations/{org}/keys/{key}"),
        ("DELETE", "/admin/organizations/{org}/keys/{key}"),
        ("POST", "/admin/organizations/{org}/keys/{key}/rotate"),
    ],
)
def test_an_admin_body_over_the_app_s_limit_is_a_413_problem_document(
    client: FlaskClient, app: Flask, method: str, path: str
) -> None:
    key = new_key(app)
    url = path.format(org=key.organization_id, key=key.id)
    body = json.dumps({"name": OVER, "reason": OVER})
    response = client.open(
        url, method=method, headers=ADMIN, data=body, content_type="application/json"
    )
    assert_problem(response, 413, "request_too_large")
    with app.app_context():  # nothing was changed by the refused request
        apikeys = app.extensions["apikeys"].extension
        assert apikeys.get_key(key.id).revoked_at is None


def test_every_operation_with_a_body_declares_the_413(client: FlaskClient) -> None:
    document = client.get("/admin/openapi.json").get_json()
    with_body = [
        (method, path, operation)
        for method, path, operation in operations(document)
        if "requestBody" in operation
    ]
    assert len(with_body) == 6
    for method, path, operation in with_body:
        name = operation["responses"]["413"]["$ref"].rsplit("/", 1)[1]
        shared = document["components"]["responses"][name]
        problem = shared["content"]["application/problem+json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}, (method, path)
    assert not [path for method, path, operation in operations(document)
                if "requestBody" not in operation and "413" in operation["responses"]]  # fmt: skip


@pytest.mark.parametrize("path", [TOKEN_PATH, INTROSPECT_PATH, REVOKE_PATH])
def test_an_oauth_form_over_the_app_s_limit_is_a_413_oauth_error(
    client: FlaskClient, app: Flask, path: str
) -> None:
    key = new_key(app, scopes=["apikeys:introspect"])
    form = {"grant_type": "client_credentials", "token": key.secret, "scope": OVER}
    response = client.post(path, headers=basic(str(key.id), key.secret), data=form)
    assert response.status_code == 413, response.get_data(as_text=True)[:200]
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "invalid_request"
    assert response.headers["Cache-Control"] == "no-store"


def test_authlib_raises_on_a_token_request_over_the_app_s_limit(app: Flask) -> None:
    key = new_key(app)
    with serving(app) as url:
        session = OAuth2Session(str(key.id), key.secret, scope=OVER)
        with pytest.raises(OAuthError) as raised:
            session.fetch_token(url + TOKEN_PATH, grant_type="client_credentials")
    assert raised.value.error == "invalid_request"


def test_the_key_exchange_over_the_app_s_limit_is_a_413_problem_document(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app)
    response = client.post(TOKEN_PATH, headers={"X-API-Key": key.secret}, json={"scope": OVER})
    assert_problem(response, 413, "request_too_large")


def test_bodies_under_the_limit_are_served_as_before(client: FlaskClient, app: Flask) -> None:
    key = new_key(app, scopes=["presentations:read"])
    created = client.post(
        "/admin/organizations",
        headers=ADMIN,
        json={"name": "Beta", "email": "b@beta.io", "plan": "pro"},
    )
    assert created.status_code == 201
    token = client.post(
        TOKEN_PATH,
        headers=basic(str(key.id), key.secret),
        data={"grant_type": "client_credentials", "scope": "presentations:read"},
    )
    assert token.status_code == 200 and token.get_json()["access_token"]
