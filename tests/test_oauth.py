"""OAuth 2.0 at the token endpoint, metadata, introspection and revocation, with real clients.

Authlib and requests-oauthlib talk to the app over real HTTP (a werkzeug server on 127.0.0.1 in a
thread); the refusals are checked through the test client as well.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session as RequestsOAuth2Session
from werkzeug.serving import make_server

from flask_apikeys import APIKeys
from flask_apikeys.config import ConfigError, load_settings

from .helpers import HS256, SECRET, TOKEN_PATH, Key, assert_problem, bearer, new_key, private_pem

FORM = "application/x-www-form-urlencoded"
INTROSPECT_PATH = "/auth/introspect"
REVOKE_PATH = "/auth/revoke"
METADATA_PATH = "/.well-known/oauth-authorization-server"
DOCS_EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.fixture
def app_config() -> dict[str, Any]:
    return dict(HS256)


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """``app`` on a real HTTP server on 127.0.0.1; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    with serving(app) as url:
        yield url


def basic(client_id: str, secret: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


def client_credentials(key: Key, **form: str) -> dict[str, Any]:
    """Test-client arguments of a client credentials request authenticated with Basic."""
    return {
        "headers": basic(str(key.id), key.secret),
        "data": {"grant_type": "client_credentials", **form},
    }


def assert_oauth_error(response: Any, status: int, error: str) -> dict[str, Any]:
    """An RFC 6749 5.2 error document: ``error`` and ``error_description``, JSON, not cached."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == error and body["error_description"]
    assert set(body) == {"error", "error_description"}
    assert response.headers["Cache-Control"] == "no-store"
    return body  # type: ignore[no-any-return]


def decoded(token: str) -> dict[str, Any]:
    return jwt.decode(  # type: ignore[no-any-return]
        token, SECRET, algorithms=["HS256"], audience="flask-apikeys", issuer="flask-apikeys"
    )


# -- 1. client credentials with real clients --------------------------------------------------


def test_authlib_gets_a_token_with_http_basic_and_uses_it(app: Flask, base_url: str) -> None:
    key = new_key(app, scopes=["presentations:read", "presentations:write"])
    session = OAuth2Session(str(key.id), key.secret, scope="presentations:read")
    token = session.fetch_token(base_url + TOKEN_PATH, grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["expires_in"] == 900
    assert token["scope"] == "presentations:read"
    claims = decoded(token["access_token"])
    assert claims["sub"] == str(key.id) and claims["scope"] == "presentations:read"
    assert session.get(base_url + "/v1/presentations").json()["key"] == str(key.id)
    refused = session.post(base_url + "/v1/presentations")
    assert refused.status_code == 403


def test_authlib_client_secret_post_with_the_key_prefix_as_client_id(
    app: Flask, base_url: str
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    prefix = key.secret[: key.secret.index("_", 3) + 5]  # pk_live_ and 4 characters
    session = OAuth2Session(prefix, key.secret, token_endpoint_auth_method="client_secret_post")
    token = session.fetch_token(base_url + TOKEN_PATH, grant_type="client_credentials")
    assert decoded(token["access_token"])["sub"] == str(key.id)
    assert session.get(base_url + "/v1/presentations").status_code == 200


def test_requests_oauthlib_backend_application_client(
    app: Flask, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on 127.0.0.1 only
    key = new_key(app, scopes=["presentations:read"])
    client = BackendApplicationClient(client_id=str(key.id), scope=["presentations:read"])
    session = RequestsOAuth2Session(client=client)
    token = session.fetch_token(
        token_url=base_url + TOKEN_PATH, client_id=str(key.id), client_secret=key.secret
    )
    assert token["scope"] == ["presentations:read"]
    response = session.get(base_url + "/v1/presentations")
    assert response.status_code == 200 and response.json()["key"] == str(key.id)


def test_authlib_raises_on_a_wrong_secret_instead_of_storing_the_error(
    app: Flask, base_url: str
) -> None:
    key = new_key(app)
    other = new_key(app)
    session = OAuth2Session(str(key.id), other.secret)
    with pytest.raises(OAuthError) as raised:
        session.fetch_token(base_url + TOKEN_PATH, grant_type="client_credentials")
    assert raised.value.error == "invalid_client"
    assert session.token is None
    response = requests.post(
        base_url + TOKEN_PATH,
        data={"grant_type": "client_credentials"},
        auth=(str(key.id), key.secret + "x"),
        timeout=10,
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert response.json()["error"] == "invalid_client"


@pytest.mark.slow  # waits a second for the token to expire
def test_authlib_refetches_an_expired_client_credentials_token(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(**HS256, APIKEYS_JWT_LIFETIME=1)
    key = new_key(app, scopes=["presentations:read"])
    with serving(app) as url:
        session = OAuth2Session(
            str(key.id),
            key.secret,
            token_endpoint=url + TOKEN_PATH,
            grant_type="client_credentials",
            leeway=0,
        )
        first = session.fetch_token()["access_token"]
        time.sleep(1.1)
        assert session.get(url + "/v1/presentations").status_code == 200
        assert session.token["access_token"] != first


# -- 1. the answers, success and refusal ------------------------------------------------------


def test_a_token_answer_has_rfc_6749_5_1_members_and_is_not_cached(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=["presentations:*"])
    response = client.post(TOKEN_PATH, **client_credentials(key, scope="presentations:read"))
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["scope"] == "presentations:read" == decoded(body["access_token"])["scope"]


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({}, 400, "invalid_request"),
        (
            {"grant_type": "password", "username": "a", "password": "b"},
            400,
            "unsupported_grant_type",
        ),
        ({"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "admin"}, 400, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": "no spaces?"}, 400, "invalid_scope"),
    ],
    ids=["no-grant-type", "password", "authorization-code", "beyond-the-key", "malformed-scope"],
)
def test_refusals_are_rfc_6749_5_2_errors(
    client: FlaskClient, app: Flask, form: dict[str, str], status: int, error: str
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    response = client.post(TOKEN_PATH, headers=basic(str(key.id), key.secret), data=form)
    assert_oauth_error(response, status, error)


def test_a_repeated_parameter_or_a_json_body_is_invalid_request(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app)
    headers = basic(str(key.id), key.secret)
    twice = "grant_type=client_credentials&grant_type=client_credentials"
    response = client.post(TOKEN_PATH, headers=headers, data=twice, content_type=FORM)
    assert_oauth_error(response, 400, "invalid_request")
    response = client.post(TOKEN_PATH, headers=headers, json={"grant_type": "client_credentials"})
    assert_oauth_error(response, 400, "invalid_request")


def test_client_authentication_failures_are_invalid_client(client: FlaskClient, app: Flask) -> None:
    key, other = new_key(app), new_key(app)
    form = {"grant_type": "client_credentials"}
    cases = [
        {"headers": basic(str(other.id), key.secret)},  # the id of another key
        {"headers": basic("pk_live_XXXX", key.secret)},
        {"headers": basic(str(key.id), "pk_live_" + "0" * 46)},
        {"headers": {"Authorization": "Basic not-base64!"}},
        {},  # no client authentication at all
    ]
    for case in cases:
        response = client.post(TOKEN_PATH, data=form, **case)
        assert_oauth_error(response, 401, "invalid_client")
        assert response.headers["WWW-Authenticate"] == 'Basic realm="api"'
    post = {**form, "client_id": str(other.id), "client_secret": key.secret}
    assert_oauth_error(client.post(TOKEN_PATH, data=post), 401, "invalid_client")
    token = client.post(TOKEN_PATH, **client_credentials(key)).get_json()["access_token"]
    response = client.post(TOKEN_PATH, headers=basic(str(key.id), token), data=form)
    assert_oauth_error(response, 401, "invalid_client")


def test_two_authentication_methods_at_once_are_invalid_request(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app)
    both = {**client_credentials(key, client_id=str(key.id), client_secret=key.secret)}
    assert_oauth_error(client.post(TOKEN_PATH, **both), 400, "invalid_request")
    with_header = client_credentials(key)
    with_header["headers"]["X-API-Key"] = key.secret
    assert_oauth_error(client.post(TOKEN_PATH, **with_header), 400, "invalid_request")


def test_the_key_in_the_bearer_header_with_grant_type_is_oauth_too(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    form = {"grant_type": "client_credentials", "scope": "presentations:write"}
    response = client.post(TOKEN_PATH, headers=bearer(key.secret), data=form)
    assert_oauth_error(response, 400, "invalid_scope")
    response = client.post(TOKEN_PATH, headers=bearer(key.secret), data={"grant_type": "password"})
    assert_oauth_error(response, 400, "unsupported_grant_type")


def test_the_documented_key_exchange_still_answers_as_before(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    response = client.post(
        TOKEN_PATH, headers=bearer(key.secret), json={"scope": "presentations:read"}
    )
    assert response.status_code == 200 and response.get_json()["scope"] == "presentations:read"
    response = client.post(TOKEN_PATH, headers=bearer(key.secret), json={"scope": "admin"})
    assert_problem(response, 403, "insufficient_scope")


def test_the_failed_attempt_block_applies_at_the_token_endpoint(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(**HS256, APIKEYS_FAILED_AUTH_LIMIT="2/minute")
    client = app.test_client()
    key = new_key(app)
    wrong = basic(str(key.id), "pk_live_" + "1" * 46)
    form = {"grant_type": "client_credentials"}
    for _ in range(2):
        assert_oauth_error(client.post(TOKEN_PATH, headers=wrong, data=form), 401, "invalid_client")
    blocked = client.post(TOKEN_PATH, headers=wrong, data=form)
    assert_oauth_error(blocked, 429, "rate_limit_exceeded")
    assert int(blocked.headers["Retry-After"]) >= 1
    # Blocked before the secret is looked at: even the right one waits.
    response = client.post(TOKEN_PATH, **client_credentials(key))
    assert_oauth_error(response, 429, "rate_limit_exceeded")


@pytest.fixture
def fuzzed(app: Flask) -> tuple[FlaskClient, Key]:
    return app.test_client(), new_key(app, scopes=["presentations:read"])


text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
#: What an HTTP server can deliver in a header value: latin-1, no line breaks.
header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    basic_value=st.one_of(st.none(), header_text, st.binary(max_size=60).map(base64.b64encode)),
    grant_type=st.one_of(st.none(), st.sampled_from(["client_credentials", "password"]), text),
    scope=st.one_of(st.none(), text),
    client_id=st.one_of(st.none(), text),
    client_secret=st.one_of(st.none(), text),
)
def test_mangled_oauth_requests_never_5xx_and_never_get_a_token(
    fuzzed: tuple[FlaskClient, Key],
    basic_value: Any,
    grant_type: str | None,
    scope: str | None,
    client_id: str | None,
    client_secret: str | None,
) -> None:
    client, _ = fuzzed
    headers = {}
    if basic_value is not None:
        value = basic_value.decode() if isinstance(basic_value, bytes) else basic_value
        headers["Authorization"] = f"Basic {value}"
    form = {
        name: value
        for name, value in [
            ("grant_type", grant_type),
            ("scope", scope),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ]
        if value is not None
    }
    response = client.post(TOKEN_PATH, headers=headers, data=form)
    if basic_value is None and not set(form) & {"grant_type", "client_id", "client_secret"}:
        assert_problem(response, 401, "missing_api_key")  # the key exchange, without a key
        return
    assert response.status_code in {400, 401, 429}, response.get_data(as_text=True)
    assert "error" in response.get_json() and "access_token" not in response.get_json()


def test_two_revocations_of_a_key_at_once_both_succeed(app: Flask, base_url: str) -> None:
    key = new_key(app, scopes=["presentations:read"])
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def revoke() -> None:
        barrier.wait()
        response = requests.post(
            base_url + REVOKE_PATH,
            data={"token": key.secret},
            auth=(str(key.id), key.secret),
            timeout=10,
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=revoke) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    # The second may find the key revoked already (401 invalid_client) or revoke it too.
    assert sorted(statuses)[0] == 200 and set(statuses) <= {200, 401}
    with app.app_context():
        assert app.extensions["apikeys"].extension.get_key(key.id).revoked_at is not None


def test_the_client_secret_never_reaches_the_logs(
    client: FlaskClient, app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key(app)
    with caplog.at_level(logging.DEBUG):
        client.post(TOKEN_PATH, **client_credentials(key))
        client.post(
            TOKEN_PATH,
            headers=basic(str(key.id), key.secret[:-1] + "Z"),
            data={"grant_type": "client_credentials"},
        )
    assert key.secret not in caplog.text and key.secret[:-1] not in caplog.text


# -- 1. metadata --------------------------------------------------------------------------------


def test_authorization_server_metadata_validates_with_authlib(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(
        APIKEYS_JWT_ENABLED=True,
        APIKEYS_JWT_PRIVATE_KEYS=[private_pem(ec.generate_private_key(ec.SECP256R1()))],
        APIKEYS_JWT_ISSUER="https://api.example.com",
    )
    response = app.test_client().get(METADATA_PATH, base_url="https://api.example.com")
    assert response.status_code == 200
    document = response.get_json()
    metadata = AuthorizationServerMetadata(document)
    checks = [name for name in dir(metadata) if name.startswith("validate_")]
    assert len(checks) > 20
    for name in checks:
        # No authorization endpoint, so no response type: RFC 8414 still lists the member, and
        # an empty list is the truth (Authlib's check wants a non-empty one).
        if name not in {"validate", "validate_response_types_supported"}:
            getattr(metadata, name)()
    assert document["response_types_supported"] == []
    assert document["issuer"] == "https://api.example.com"
    assert document["token_endpoint"] == "https://api.example.com" + TOKEN_PATH
    assert document["jwks_uri"] == "https://api.example.com/.well-known/jwks.json"
    assert document["grant_types_supported"] == ["client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert document["introspection_endpoint"] == "https://api.example.com" + INTROSPECT_PATH
    assert document["revocation_endpoint"] == "https://api.example.com" + REVOKE_PATH


def test_a_client_finds_the_token_endpoint_through_the_metadata(app: Flask, base_url: str) -> None:
    key = new_key(app, scopes=["presentations:read"])
    metadata = requests.get(base_url + METADATA_PATH, timeout=10).json()
    assert "jwks_uri" not in metadata  # an HS256 secret is not published
    session = OAuth2Session(str(key.id), key.secret)
    token = session.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    assert session.get(base_url + "/v1/presentations").status_code == 200
    assert token["access_token"]


def test_views_are_the_extension_s_own_endpoints(app: Flask) -> None:
    endpoints = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints[TOKEN_PATH] == "apikeys_tokens.issue_token"
    assert endpoints[METADATA_PATH] == "apikeys_oauth.authorization_server_metadata"
    assert endpoints[INTROSPECT_PATH] == "apikeys_oauth.introspect"
    assert endpoints[REVOKE_PATH] == "apikeys_oauth.revoke"


def test_without_tokens_there_is_no_metadata_but_keys_can_be_introspected(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    client = app.test_client()
    assert METADATA_PATH not in {rule.rule for rule in app.url_map.iter_rules()}
    gateway, key = new_key(app, scopes=["apikeys:introspect"]), new_key(app)
    response = client.post(
        INTROSPECT_PATH, headers=bearer(gateway.secret), data={"token": key.secret}
    )
    assert response.status_code == 200 and response.get_json()["active"] is True


# -- 2. introspection -------------------------------------------------------------------------


def test_a_gateway_introspects_keys_and_tokens_with_authlib(app: Flask, base_url: str) -> None:
    gateway = new_key(app, scopes=["apikeys:introspect"])
    key = new_key(app, scopes=["presentations:read", "slides:generate"], expires_in_days=30)
    session = OAuth2Session(str(gateway.id), gateway.secret)
    answer = session.introspect_token(base_url + INTROSPECT_PATH, token=key.secret).json()
    assert answer["active"] is True
    assert answer["scope"] == "presentations:read slides:generate"
    assert answer["client_id"] == answer["sub"] == str(key.id)
    assert answer["org"] == str(key.organization_id) and answer["organization"] == "acme"
    assert answer["credential_type"] == "api_key"
    assert abs(answer["exp"] - (time.time() + 30 * 86400)) < 60
    token = requests.post(
        base_url + TOKEN_PATH,
        data={"grant_type": "client_credentials", "scope": "slides:generate"},
        auth=(str(key.id), key.secret),
        timeout=10,
    ).json()["access_token"]
    answer = session.introspect_token(base_url + INTROSPECT_PATH, token=token).json()
    claims = decoded(token)
    assert answer["active"] is True and answer["scope"] == "slides:generate"
    assert answer["credential_type"] == "access_token" and answer["token_type"] == "Bearer"
    assert answer["client_id"] == str(key.id) and answer["exp"] == claims["exp"]
    assert answer["jti"] == claims["jti"] and answer["iss"] == "flask-apikeys"


def test_introspection_of_what_is_not_usable_answers_only_active_false(
    client: FlaskClient, app: Flask, apikeys: APIKeys
) -> None:
    gateway = new_key(app, scopes=["apikeys:introspect"])
    revoked, expiring = new_key(app), new_key(app)
    token = client.post(TOKEN_PATH, **client_credentials(revoked)).get_json()["access_token"]
    with app.app_context():
        apikeys.revoke_key(revoked.id, reason="test")
        other = apikeys.create_organization(name="Other", email="o@other.com", plan="pro")
        elsewhere = apikeys.create_key(other, "Other key").key
    claims = decoded(token)
    forged = jwt.encode(
        {**claims, "exp": int(time.time()) - 5},
        SECRET,
        algorithm="HS256",
        headers={"kid": jwt.get_unverified_header(token)["kid"], "typ": "at+jwt"},
    )
    del expiring
    for presented in [
        revoked.secret,
        token,  # its key is revoked
        forged,  # expired
        "pk_live_" + "0" * 46,
        "not a credential",
        elsewhere,  # valid, but another organization's
    ]:
        response = client.post(
            INTROSPECT_PATH, headers=bearer(gateway.secret), data={"token": presented}
        )
        assert response.status_code == 200
        assert response.get_json() == {"active": False}
        assert response.headers["Cache-Control"] == "no-store"


def test_introspection_needs_a_credential_with_the_dedicated_scope(
    client: FlaskClient, app: Flask
) -> None:
    plain = new_key(app, scopes=["presentations:read"])
    key = new_key(app)
    data = {"token": key.secret}
    response = client.post(INTROSPECT_PATH, headers=bearer(plain.secret), data=data)
    assert_oauth_error(response, 403, "insufficient_scope")
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", scope="apikeys:introspect"'
    )
    response = client.post(INTROSPECT_PATH, headers=basic(str(plain.id), plain.secret), data=data)
    assert_oauth_error(response, 403, "insufficient_scope")
    assert_oauth_error(client.post(INTROSPECT_PATH, data=data), 401, "invalid_client")
    response = client.post(INTROSPECT_PATH, headers=bearer("pk_live_" + "0" * 46), data=data)
    assert_oauth_error(response, 401, "invalid_token")
    assert response.headers["WWW-Authenticate"].startswith(
        'Bearer realm="api", error="invalid_token"'
    )
    gateway = new_key(app, scopes=["apikeys:introspect"])
    assert_oauth_error(
        client.post(INTROSPECT_PATH, headers=bearer(gateway.secret), data={}),
        400,
        "invalid_request",
    )


def test_introspection_is_rate_limited_per_calling_key(client: FlaskClient, app: Flask) -> None:
    gateway = new_key(app, scopes=["apikeys:introspect"], rate_limit="2/minute")
    key = new_key(app)
    data = {"token": key.secret}
    for _ in range(2):
        response = client.post(INTROSPECT_PATH, headers=bearer(gateway.secret), data=data)
        assert response.status_code == 200 and response.headers["X-RateLimit-Limit"] == "2"
    response = client.post(INTROSPECT_PATH, headers=bearer(gateway.secret), data=data)
    assert_oauth_error(response, 429, "rate_limit_exceeded")
    assert "Retry-After" in response.headers


def test_the_bootstrap_admin_key_introspects_every_organization(
    make_app: Callable[..., Flask],
) -> None:
    admin_key = "bootstrap-admin-key-of-at-least-32-characters"
    app = make_app(**HS256, APIKEYS_ADMIN_KEY=admin_key)
    with app.app_context():
        apikeys = app.extensions["apikeys"].extension
        other = apikeys.create_organization(name="Other", email="o@other.com", plan="pro")
        elsewhere = apikeys.create_key(other, "Other key").key
    response = app.test_client().post(
        INTROSPECT_PATH, headers=bearer(admin_key), data={"token": elsewhere}
    )
    assert response.get_json()["active"] is True
    assert response.get_json()["organization"] == "other"


# -- 2. revocation ------------------------------------------------------------------------------


def test_revoking_an_access_token_with_authlib_makes_it_stop_working(
    app: Flask, base_url: str
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    session = OAuth2Session(str(key.id), key.secret)
    token = session.fetch_token(base_url + TOKEN_PATH, grant_type="client_credentials")
    other = OAuth2Session(str(key.id), key.secret)
    kept = other.fetch_token(base_url + TOKEN_PATH, grant_type="client_credentials")
    assert session.get(base_url + "/v1/presentations").status_code == 200
    response = session.revoke_token(base_url + REVOKE_PATH, token=token["access_token"])
    assert response.status_code == 200
    refused = session.get(base_url + "/v1/presentations")
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_token"
    assert "revoked" in refused.json()["detail"]
    # Only that token: the key's other tokens, and the key, still work.
    assert other.get(base_url + "/v1/presentations").status_code == 200
    assert kept["access_token"] != token["access_token"]
    response = requests.get(base_url + "/v1/presentations", headers=bearer(key.secret), timeout=10)
    assert response.status_code == 200


def test_a_key_revokes_itself_but_not_another_key(client: FlaskClient, app: Flask) -> None:
    # Not "*": a key with every scope has "admin", and an admin may revoke its org's keys.
    key = new_key(app, scopes=["presentations:read"])
    other = new_key(app, scopes=["presentations:read"])
    response = client.post(REVOKE_PATH, headers=bearer(key.secret), data={"token": other.secret})
    assert response.status_code == 200  # the same answer as for an unknown token
    assert client.get("/v1/presentations", headers=bearer(other.secret)).status_code == 200
    token = client.post(TOKEN_PATH, **client_credentials(other)).get_json()["access_token"]
    response = client.post(REVOKE_PATH, headers=bearer(key.secret), data={"token": token})
    assert response.status_code == 200
    assert client.get("/v1/presentations", headers=bearer(token)).status_code == 200
    # A token of a key cannot revoke the key itself (a stolen token must not take it down).
    response = client.post(REVOKE_PATH, headers=bearer(token), data={"token": other.secret})
    assert client.get("/v1/presentations", headers=bearer(other.secret)).status_code == 200
    response = client.post(
        REVOKE_PATH, headers=basic(str(other.id), other.secret), data={"token": other.secret}
    )
    assert response.status_code == 200
    assert_problem(
        client.get("/v1/presentations", headers=bearer(other.secret)), 401, "revoked_api_key"
    )
    with app.app_context():
        stored = app.extensions["apikeys"].extension.get_key(other.id)
        assert stored.revoked_by == f"api-key:{other.id}"
    # Revoking again, or garbage, is still 200.
    again = client.post(REVOKE_PATH, headers=bearer(key.secret), data={"token": other.secret})
    assert again.status_code == 200


def test_an_admin_of_the_organization_revokes_its_keys_and_tokens(
    client: FlaskClient, app: Flask, apikeys: APIKeys
) -> None:
    admin, key = new_key(app, scopes=["admin"]), new_key(app)
    token = client.post(TOKEN_PATH, **client_credentials(key)).get_json()["access_token"]
    with app.app_context():
        other = apikeys.create_organization(name="Other", email="o@other.com", plan="pro")
        foreign_admin = apikeys.create_key(other, "Other admin", scopes=["admin"]).key
    for target in (token, key.secret):
        client.post(REVOKE_PATH, headers=bearer(foreign_admin), data={"token": target})
        assert client.get("/v1/whoami", headers=bearer(target)).status_code == 200
    client.post(REVOKE_PATH, headers=bearer(admin.secret), data={"token": token})
    assert client.get("/v1/whoami", headers=bearer(token)).status_code == 401
    client.post(REVOKE_PATH, headers=bearer(admin.secret), data={"token": key.secret})
    assert client.get("/v1/whoami", headers=bearer(key.secret)).status_code == 401


def test_revocation_needs_an_authenticated_client(client: FlaskClient, app: Flask) -> None:
    key = new_key(app)
    assert_oauth_error(client.post(REVOKE_PATH, data={"token": key.secret}), 401, "invalid_client")
    response = client.post(REVOKE_PATH, headers=bearer(key.secret), data={})
    assert_oauth_error(response, 400, "invalid_request")
    assert client.get("/v1/whoami", headers=bearer(key.secret)).status_code == 200


@pytest.mark.redis
def test_a_revoked_token_is_refused_by_every_process_sharing_redis(
    make_app: Callable[..., Flask], redis_url: str
) -> None:
    config = {**HS256, "APIKEYS_RATELIMIT_STORAGE_URI": redis_url}
    first, second = make_app(**config), make_app(**config)
    key = new_key(first)
    token = (
        first.test_client().post(TOKEN_PATH, **client_credentials(key)).get_json()["access_token"]
    )
    response = first.test_client().post(
        REVOKE_PATH, headers=bearer(key.secret), data={"token": token}
    )
    assert response.status_code == 200
    refused = second.test_client().get("/v1/whoami", headers=bearer(token))
    assert_problem(refused, 401, "invalid_token")


# -- 3. RFC 6750 challenges ---------------------------------------------------------------------


def test_insufficient_scope_for_a_bearer_credential_carries_the_rfc_6750_challenge(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    response = client.post("/v1/generate/outline", headers=bearer(key.secret))
    assert_problem(response, 403, "insufficient_scope")
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", error_description="Insufficient scope", '
        'scope="outline:generate presentations:write"'
    )
    token = client.post(TOKEN_PATH, **client_credentials(key)).get_json()["access_token"]
    response = client.get("/v1/media", headers=bearer(token))
    assert_problem(response, 403, "insufficient_scope")
    assert 'scope="images:read slides:read"' in response.headers["WWW-Authenticate"]
    # Not a Bearer credential: no Bearer challenge.
    response = client.post("/v1/generate/outline", headers={"X-API-Key": key.secret})
    assert_problem(response, 403, "insufficient_scope")
    assert "WWW-Authenticate" not in response.headers
    # 401s keep theirs.
    response = client.get("/v1/presentations", headers=bearer("pk_live_" + "0" * 46))
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert client.get("/v1/presentations").headers["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_read_only_key_s_refusal_challenges_without_a_scope(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=[], level="read-only")
    response = client.post("/v1/items", headers=bearer(key.secret))
    assert_problem(response, 403, "insufficient_scope")
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", error_description="Insufficient scope"'
    )


# -- docs ---------------------------------------------------------------------------------------


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", DOCS_EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_gateway_and_client_examples_run(app: Flask, base_url: str) -> None:
    gateway_example = load_example("oauth_gateway.py")
    client_example = load_example("oauth_client.py")
    gateway = new_key(app, scopes=["apikeys:introspect"])
    key = new_key(app, scopes=["presentations:read"])
    session = client_example.api_session(
        str(key.id), key.secret, base_url + TOKEN_PATH, scope="presentations:read"
    )
    assert session.get(base_url + "/v1/presentations").status_code == 200
    token = session.token["access_token"]
    url = base_url + INTROSPECT_PATH
    for credential in (key.secret, token):
        answer = gateway_example.check_credential(credential, gateway.secret, url)
        assert answer is not None and answer["client_id"] == str(key.id)
        assert answer["scope"] == "presentations:read"
    assert gateway_example.check_credential("pk_live_" + "0" * 46, gateway.secret, url) is None
    assert isinstance(uuid.UUID(answer["org"]), uuid.UUID)


# -- configuration ------------------------------------------------------------------------------


def test_paths_and_scope_are_configurable_and_the_endpoints_can_be_left_off(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(
        **HS256,
        APIKEYS_INTROSPECTION_PATH="/internal/introspect",
        APIKEYS_INTROSPECTION_SCOPE="gateway:check",
        APIKEYS_REVOCATION_PATH="",
    )
    rules = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
    assert rules["/internal/introspect"] == "apikeys_oauth.introspect"
    assert REVOKE_PATH not in rules and INTROSPECT_PATH not in rules
    client = app.test_client()
    assert "revocation_endpoint" not in client.get(METADATA_PATH).get_json()
    gateway, key = new_key(app, scopes=["gateway:check"]), new_key(app)
    answer = client.post(
        "/internal/introspect", headers=bearer(gateway.secret), data={"token": key.secret}
    ).get_json()
    assert answer["active"] is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APIKEYS_INTROSPECTION_PATH", "auth/introspect"),
        ("APIKEYS_REVOCATION_PATH", "/auth/<kind>"),
        ("APIKEYS_INTROSPECTION_SCOPE", "not a scope"),
        ("APIKEYS_INTROSPECTION_SCOPE", "a:read,b:read"),
    ],
)
def test_bad_oauth_settings_stop_init_app(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value}, environ={})


class CountingStream:
    """A request body that counts what the app reads of it."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        wanted = self.left if size is None or size < 0 else min(size, self.left)
        self.left -= wanted
        self.read_bytes += wanted
        return b" " * wanted


@pytest.mark.parametrize("path", [TOKEN_PATH, "/auth/introspect", "/auth/revoke"])
@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded"]
)
def test_a_big_body_is_refused_unread(client: FlaskClient, path: str, content_type: str) -> None:
    """Nobody can make the OAuth endpoints read and parse megabytes before authenticating
    (they read all of any body, from anyone: a JSON one to tell OAuth from the key exchange,
    a form for its credentials)."""
    size = 20 * 1024 * 1024
    body = CountingStream(size)
    response = client.post(
        path,
        content_type=content_type,
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(size)},
    )
    if path == TOKEN_PATH and content_type != "application/x-www-form-urlencoded":
        # The key exchange (no Basic, no form): authenticated before its body is read.
        assert_problem(response, 401, "missing_api_key")
    else:
        assert response.status_code == 413, response.get_data(as_text=True)[:200]
        assert response.json is not None and response.json["error"] == "invalid_request"
    assert body.read_bytes < 64 * 1024


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_the_key_exchange_answers_a_big_body_with_a_problem_document(
    client: FlaskClient, app: Flask, content_type: str
) -> None:
    """The key exchange speaks problem documents, whatever its body's size (an OAuth error
    there would be a client's surprise): a key in the header, 20 KiB of nested JSON."""
    key = new_key(app)
    body = '{"scope": ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "}"
    response = client.post(
        TOKEN_PATH, headers={"X-API-Key": key.secret}, data=body, content_type=content_type
    )
    assert response.status_code in (400, 422), response.get_data(as_text=True)[:200]
    assert response.mimetype == "application/problem+json"
