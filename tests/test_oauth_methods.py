"""A method an OAuth endpoint does not serve: RFC 6749's error format, never the API's 401;
and what standard clients do when their token expires.

The token, introspection and revocation paths and the metadata and JWKS documents are published
(in the metadata itself), so a wrong method on them is told apart from a missing key, as the
admin API's are. Authlib may send a token request with ``GET`` (its ``fetch_token(method=…)``)
and stores whatever JSON comes back as its token unless it holds ``error``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from oauthlib.oauth2 import BackendApplicationClient
from oauthlib.oauth2.rfc6749.errors import UnsupportedGrantTypeError
from requests_oauthlib import OAuth2Session as RequestsOAuth2Session

from .helpers import HS256, TOKEN_PATH, bearer, new_key, private_pem
from .test_oauth import INTROSPECT_PATH, METADATA_PATH, REVOKE_PATH, serving

JWKS_PATH = "/.well-known/jwks.json"
#: Each OAuth path and the methods it serves (``HEAD`` goes with ``GET``).
SERVED = {
    TOKEN_PATH: ["POST"],
    INTROSPECT_PATH: ["POST"],
    REVOKE_PATH: ["POST"],
    METADATA_PATH: ["GET", "HEAD"],
    JWKS_PATH: ["GET", "HEAD"],
}
OTHER_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Tokens signed with a private key, so that the JWKS document is published too."""
    private_key = private_pem(ec.generate_private_key(ec.SECP256R1()))
    return {"APIKEYS_JWT_ENABLED": True, "APIKEYS_JWT_PRIVATE_KEYS": [private_key]}


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    with serving(app) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "method"),
    [(path, method) for path, served in SERVED.items() for method in OTHER_METHODS
     if method not in served],
)  # fmt: skip
def test_a_method_the_endpoint_does_not_serve_is_a_405_oauth_error_without_a_key(
    client: FlaskClient, path: str, method: str
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert "WWW-Authenticate" not in response.headers
    allowed = {name.strip() for name in response.headers["Allow"].split(",")}
    assert allowed == {*SERVED[path], "OPTIONS"}
    assert response.headers["Cache-Control"] == "no-store"
    if method != "HEAD":
        body = response.get_json()
        assert body["error"] == "invalid_request" and body["error_description"]


@pytest.mark.parametrize("path", list(SERVED))
def test_options_lists_exactly_the_methods_the_endpoint_serves(
    client: FlaskClient, path: str
) -> None:
    response = client.options(path)
    assert response.status_code in (200, 204)
    allowed = {name.strip() for name in response.headers["Allow"].split(",")}
    assert allowed == {*SERVED[path], "OPTIONS"}


def test_a_key_changes_nothing_about_a_wrong_method(client: FlaskClient, app: Flask) -> None:
    key = new_key(app)
    response = client.get(TOKEN_PATH, headers=bearer(key.secret))
    assert response.status_code == 405 and response.get_json()["error"] == "invalid_request"


def test_the_served_methods_still_answer(client: FlaskClient, app: Flask) -> None:
    key = new_key(app, scopes=["presentations:read"])
    assert client.post(TOKEN_PATH, headers=bearer(key.secret)).status_code == 200
    assert client.get(METADATA_PATH).status_code == 200
    assert client.head(METADATA_PATH).status_code == 200
    assert client.get(JWKS_PATH).get_json()["keys"]


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_authlib_raises_on_a_get_token_request_instead_of_storing_the_answer(
    app: Flask, base_url: str, auth_method: str
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    session = OAuth2Session(str(key.id), key.secret, token_endpoint_auth_method=auth_method)
    with pytest.raises(OAuthError) as raised:
        session.fetch_token(base_url + TOKEN_PATH, method="GET", grant_type="client_credentials")
    assert raised.value.error == "invalid_request"
    assert not session.token


def test_the_api_s_own_wrong_methods_still_need_a_key(client: FlaskClient) -> None:
    """Only the extension's published paths: an app route's 405 is not told to strangers."""
    response = client.delete("/v1/presentations")
    assert response.status_code == 401


def test_wrong_methods_under_hs256_tokens_leave_the_unpublished_jwks_path_alone(
    make_app: Any,
) -> None:
    """With an HS256 secret there is no JWKS document: its path is the app's, like any other."""
    app = make_app(**HS256)
    response = app.test_client().get(JWKS_PATH)
    assert response.status_code == 401


# -- requests-oauthlib at expiry ----------------------------------------------------------------


def load_example(name: str) -> Any:
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expire(session: Any) -> str:
    """Make the session's token expired on the client's side; return it."""
    token = dict(session.token, expires_in=-10, expires_at=time.time() - 10)
    session.token = token
    return str(token["access_token"])


def test_the_documented_requests_oauthlib_client_fetches_a_new_token_at_expiry(
    app: Flask, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on 127.0.0.1 only
    key = new_key(app, scopes=["presentations:read"])
    example = load_example("oauth_client_requests_oauthlib.py")
    session = example.APISession(
        str(key.id), key.secret, base_url + TOKEN_PATH, scope="presentations:read"
    )
    assert session.get(base_url + "/v1/presentations").status_code == 200
    first = expire(session)
    assert session.get(base_url + "/v1/presentations").status_code == 200
    assert session.token["access_token"] != first


def test_auto_refresh_url_is_told_that_there_are_no_refresh_tokens(
    app: Flask, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests-oauthlib's ``auto_refresh_url`` sends a refresh grant with no refresh token;
    the refusal says what to do instead (docs/tokens.rst shows it)."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    key = new_key(app, scopes=["presentations:read"])
    session = RequestsOAuth2Session(
        client=BackendApplicationClient(client_id=str(key.id)),
        auto_refresh_url=base_url + TOKEN_PATH,
        auto_refresh_kwargs={"client_id": str(key.id), "client_secret": key.secret},
        token_updater=lambda token: None,
    )
    session.fetch_token(base_url + TOKEN_PATH, client_id=str(key.id), client_secret=key.secret)
    expire(session)
    with pytest.raises(UnsupportedGrantTypeError) as raised:
        session.get(base_url + "/v1/presentations")
    assert "client_credentials" in str(raised.value.description)
    assert "refresh token" in str(raised.value.description)


# -- a key in the URL ------------------------------------------------------------------------------

BOOTSTRAP = "bootstrap-admin-" + "k" * 32


@pytest.mark.parametrize(
    ("path", "how"),
    [
        (TOKEN_PATH, "client_secret_post"),  # the secret in the URL, the rest in the form
        (TOKEN_PATH, "malformed_basic"),
        (INTROSPECT_PATH, "bootstrap"),
        (REVOKE_PATH, "bootstrap"),
        (REVOKE_PATH, "no_credentials"),
    ],
)
def test_a_key_in_the_url_is_refused_whatever_else_the_request_gets_wrong(
    make_app: Any, path: str, how: str
) -> None:
    """RFC 6749 2.3.1: credentials never in the URI; the docs: a key there is refused with
    400, and the client told to revoke it, before the client is authenticated (the bootstrap
    key's path and the client authentication failures included)."""
    app = make_app(**HS256, APIKEYS_ADMIN_KEY=BOOTSTRAP)
    key, leaked = new_key(app), new_key(app)
    form: dict[str, str] = {"grant_type": "client_credentials", "token": leaked.secret}
    headers: dict[str, str] = {}
    url = f"{path}?token={leaked.secret}"
    if how == "client_secret_post":
        url, form = f"{path}?client_secret={key.secret}", {**form, "client_id": str(key.id)}
    elif how == "malformed_basic":
        headers = {"Authorization": "Basic not-base64!"}
    elif how == "bootstrap":
        headers = bearer(BOOTSTRAP)
    response = app.test_client().post(url, headers=headers, data=form)
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == "invalid_request" and "URL" in body["error_description"]
    with app.app_context():
        assert app.extensions["apikeys"].extension.get_key(leaked.id).revoked_at is None
