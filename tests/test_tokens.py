"""JWT access tokens issued for keys: issuing, using, refusing, JWKS and rotation, over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_apikeys import APIKeys, tokens
from flask_apikeys.config import ConfigError, load_settings
from flask_apikeys.models import APIKey, APIKeyUsage

from .factory import create_app
from .helpers import HS256, SECRET, TOKEN_PATH, Key, assert_problem, bearer, new_key, private_pem

JWKS_PATH = "/.well-known/jwks.json"


@pytest.fixture
def app_config() -> dict[str, Any]:
    return dict(HS256)


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def second_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def get_token(client: FlaskClient, key: str, **kwargs: Any) -> dict[str, Any]:
    response = client.post(TOKEN_PATH, headers={"Authorization": f"Bearer {key}"}, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def assert_token_refused(response: Any, code: str = "invalid_token") -> dict[str, Any]:
    body = assert_problem(response, 401, code)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    return body


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS built by hand, for the forgeries PyJWT refuses to produce."""
    signing_input = (
        f"{base64url(json.dumps(header).encode())}.{base64url(json.dumps(claims).encode())}"
    )
    return f"{signing_input}.{base64url(sign(signing_input.encode()))}"


# -- issuing and using ------------------------------------------------------------------------


def test_a_key_is_exchanged_for_a_token_with_the_documented_claims(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=["presentations:read", "presentations:write"])
    before = int(time.time())
    response = client.post(TOKEN_PATH, headers={"X-API-Key": key.secret})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    token = body["access_token"]
    assert token.startswith("eyJ") and token.count(".") == 2
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["typ"] == "at+jwt" and header["kid"]
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], audience="flask-apikeys", issuer="flask-apikeys"
    )
    assert claims["sub"] == str(key.id) and claims["org"] == str(key.organization_id)
    assert claims["scope"] == "presentations:read presentations:write" == body["scope"]
    # At least the 900 s promised from the moment it was issued, counted in whole seconds.
    assert claims["exp"] - claims["iat"] in (900, 901) and claims["exp"] >= before + 900
    assert claims["iat"] >= int(before)
    assert len(claims["jti"]) >= 16
    second = get_token(client, key.secret)["access_token"]
    assert jwt.decode(second, options={"verify_signature": False})["jti"] != claims["jti"]


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "ES256"])
def test_a_token_authenticates_as_its_key(
    make_app: Callable[..., Flask],
    backend_url: str,
    algorithm: str,
    rsa_key: Any,
    ec_key: Any,
) -> None:
    signing = {
        "HS256": {"APIKEYS_JWT_SECRET": SECRET},
        "RS256": {"APIKEYS_JWT_PRIVATE_KEYS": [private_pem(rsa_key)]},
        "ES256": {"APIKEYS_JWT_PRIVATE_KEYS": [private_pem(ec_key)]},
    }[algorithm]
    app = make_app(backend_url, APIKEYS_JWT_ENABLED=True, **signing)
    client = app.test_client()
    key = new_key(app, scopes=["presentations:read"])
    token = get_token(client, key.secret)["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    response = client.get("/v1/presentations", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"org": "acme", "key": str(key.id)}
    assert_problem(
        client.post("/v1/presentations", headers=bearer(token)), 403, "insufficient_scope"
    )


def test_lifetime_is_configurable_and_never_outlasts_the_key(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(**HS256, APIKEYS_JWT_LIFETIME=60)
    client = app.test_client()
    assert get_token(client, new_key(app).secret)["expires_in"] == 60
    soon = datetime.now(UTC) + timedelta(seconds=30)
    short_lived = new_key(app, expires_at=soon)
    assert 28 <= get_token(client, short_lived.secret)["expires_in"] <= 30


def test_a_token_can_carry_a_subset_of_the_key_scopes(client: FlaskClient, app: Flask) -> None:
    key = new_key(app, scopes=["presentations:read", "presentations:write"])
    body = get_token(client, key.secret, json={"scope": "presentations:read"})
    assert body["scope"] == "presentations:read"
    token = body["access_token"]
    assert client.get("/v1/presentations", headers=bearer(token)).status_code == 200
    assert_problem(
        client.post("/v1/presentations", headers=bearer(token)), 403, "insufficient_scope"
    )
    assert client.get("/v1/whoami", headers=bearer(token)).get_json()["scopes"] == [
        "presentations:read"
    ]
    # The key itself keeps all of its scopes.
    assert client.post("/v1/presentations", headers=bearer(key.secret)).status_code == 201


def test_a_wildcard_key_grants_specific_scopes_and_form_bodies_work(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=["presentations:*"])
    body = get_token(client, key.secret, data={"scope": "presentations:write"})
    assert body["scope"] == "presentations:write"
    assert client.post("/v1/presentations", headers=bearer(body["access_token"])).status_code == 201


@pytest.mark.parametrize(
    "scope", ["admin", "presentations:read admin", "*", "presentations:*", "*:read"]
)
def test_asking_for_more_than_the_key_has_is_refused(
    client: FlaskClient, app: Flask, scope: str
) -> None:
    key = new_key(app, scopes=["presentations:read"])
    response = client.post(TOKEN_PATH, headers=bearer(key.secret), json={"scope": scope})
    body = assert_problem(response, 403, "insufficient_scope")
    assert "presentations:read" not in body["scopes_not_granted"]


@pytest.mark.parametrize(
    "body", [{"scope": 5}, {"scope": "not a scope!"}, ["presentations:read"], "text"]
)
def test_a_malformed_scope_request_is_422(client: FlaskClient, app: Flask, body: Any) -> None:
    key = new_key(app)
    response = client.post(TOKEN_PATH, headers=bearer(key.secret), json=body)
    assert_problem(response, 422, "invalid_input")


def test_a_read_only_key_may_get_a_token_but_not_write_with_it(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, scopes=["presentations:read"], level="read-only")
    token = get_token(client, key.secret)["access_token"]
    assert client.get("/v1/presentations", headers=bearer(token)).status_code == 200
    assert_problem(client.post("/v1/items", headers=bearer(token)), 403, "insufficient_scope")


def test_the_token_endpoint_needs_a_key_and_not_a_token(client: FlaskClient, app: Flask) -> None:
    assert_problem(client.post(TOKEN_PATH), 401, "missing_api_key")
    assert_problem(
        client.post(TOKEN_PATH, headers=bearer("pk_live_" + "0" * 46)), 401, "invalid_api_key"
    )
    token = get_token(client, new_key(app).secret)["access_token"]
    body = assert_problem(client.post(TOKEN_PATH, headers=bearer(token)), 401, "invalid_api_key")
    assert "cannot be exchanged" in body["detail"]


def test_the_token_path_is_configurable(make_app: Callable[..., Flask]) -> None:
    app = make_app(**HS256, APIKEYS_JWT_TOKEN_PATH="/v1/oauth/token")
    client = app.test_client()
    key = new_key(app)
    response = client.post("/v1/oauth/token", headers=bearer(key.secret))
    assert response.status_code == 200
    assert client.post(TOKEN_PATH, headers=bearer(key.secret)).status_code == 404


# -- refusals ---------------------------------------------------------------------------------


@pytest.fixture
def issued(client: FlaskClient, app: Flask) -> tuple[Key, dict[str, Any], dict[str, Any]]:
    """A key, and the header and claims of a genuine token for it (to forge variants of)."""
    key = new_key(app, scopes=["presentations:read"])
    token = get_token(client, key.secret)["access_token"]
    return (
        key,
        jwt.get_unverified_header(token),
        jwt.decode(token, options={"verify_signature": False}),
    )


def sign(claims: dict[str, Any], header: dict[str, Any], secret: str = SECRET) -> str:
    headers = {"kid": header["kid"], "typ": header["typ"]}
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers)


def test_a_re_signed_genuine_token_is_accepted(client: FlaskClient, issued: Any) -> None:
    """The forgeries below differ from this one in one respect each."""
    _, header, claims = issued
    assert client.get("/v1/whoami", headers=bearer(sign(claims, header))).status_code == 200


def test_an_expired_token_is_401_expired_token(client: FlaskClient, issued: Any) -> None:
    _, header, claims = issued
    token = sign({**claims, "iat": claims["iat"] - 1000, "exp": int(time.time()) - 1}, header)
    body = assert_token_refused(client.get("/v1/whoami", headers=bearer(token)), "expired_token")
    assert "request a new one" in body["detail"]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: {**c, "aud": "another-api"}, id="wrong-audience"),
        pytest.param(lambda c: {**c, "aud": ["flask-apikeys", "other"]}, id="audience-list"),
        pytest.param(lambda c: {**c, "iss": "someone-else"}, id="wrong-issuer"),
        pytest.param(lambda c: {k: v for k, v in c.items() if k != "jti"}, id="no-jti"),
        pytest.param(lambda c: {k: v for k, v in c.items() if k != "exp"}, id="no-exp"),
        pytest.param(lambda c: {k: v for k, v in c.items() if k != "scope"}, id="no-scope"),
        pytest.param(lambda c: {**c, "sub": "not-a-uuid"}, id="bad-sub"),
        pytest.param(lambda c: {**c, "sub": str(uuid.uuid4())}, id="unknown-key"),
        pytest.param(lambda c: {**c, "org": str(uuid.uuid4())}, id="other-organization"),
        pytest.param(lambda c: {**c, "scope": ["presentations:read"]}, id="scope-not-a-string"),
    ],
)
def test_a_token_with_wrong_claims_is_401_invalid_token(
    client: FlaskClient, issued: Any, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    _, header, claims = issued
    assert_token_refused(client.get("/v1/whoami", headers=bearer(sign(change(claims), header))))


def test_a_bad_signature_is_401_invalid_token(client: FlaskClient, issued: Any) -> None:
    _, header, claims = issued
    token = sign(claims, header)
    body, signature = token.rsplit(".", 1)
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    response = assert_token_refused(client.get("/v1/whoami", headers=bearer(f"{body}.{flipped}")))
    assert "signature" in response["detail"]
    other_secret = sign(claims, header, secret="another-secret-of-at-least-32-characters")
    assert_token_refused(client.get("/v1/whoami", headers=bearer(other_secret)))


def test_alg_none_is_401_invalid_token(client: FlaskClient, issued: Any) -> None:
    _, header, claims = issued
    for algorithm in ("none", "None", "NONE"):
        token = compact({**header, "alg": algorithm}, claims, lambda data: b"")
        assert_token_refused(client.get("/v1/whoami", headers=bearer(token)))


@pytest.mark.parametrize(
    "header_change",
    [
        pytest.param(lambda h: {**h, "kid": "unknown"}, id="unknown-kid"),
        pytest.param(lambda h: {k: v for k, v in h.items() if k != "kid"}, id="no-kid"),
        pytest.param(lambda h: {**h, "typ": "JWT"}, id="not-an-access-token"),
        pytest.param(lambda h: {**h, "alg": "HS512"}, id="other-hmac"),
    ],
)
def test_a_token_with_a_wrong_header_is_401_invalid_token(
    client: FlaskClient, issued: Any, header_change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    _, header, claims = issued
    header = header_change(header)
    digest = hashlib.sha512 if header["alg"] == "HS512" else hashlib.sha256
    token = compact(header, claims, lambda data: hmac.new(SECRET.encode(), data, digest).digest())
    assert_token_refused(client.get("/v1/whoami", headers=bearer(token)))


@pytest.mark.parametrize(
    "token", ["eyJ.eyJ.", "eyJhbGciOiJIUzI1NiJ9.e30.", "eyJ" + "A" * 9000 + ".a.b", "eyJ!!.x.y"]
)
def test_garbage_that_looks_like_a_token_is_401_invalid_token(
    client: FlaskClient, token: str
) -> None:
    assert_token_refused(client.get("/v1/whoami", headers=bearer(token)))


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
def fuzzed(make_app: Callable[..., Flask]) -> tuple[FlaskClient, str]:
    """A client of an app that limits no failed attempts, and a genuine token to mutate."""
    app = make_app(**HS256, APIKEYS_FAILED_AUTH_LIMIT=None)
    client = app.test_client()
    return client, get_token(client, new_key(app).secret)["access_token"]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mangled_tokens_never_5xx_and_never_authenticate(
    fuzzed: tuple[FlaskClient, str], data: st.DataObject
) -> None:
    client, token = fuzzed
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(BASE64URL + "."))
    mutated = token[:position] + replacement + token[position + 1 :]
    candidate = data.draw(
        st.one_of(
            st.just(mutated),
            st.builds(lambda body: "eyJ" + body, st.text(alphabet=BASE64URL + ".", max_size=300)),
        )
    )
    if candidate == token:
        return
    response = client.get("/v1/whoami", headers=bearer(candidate))
    # A flipped last character may only change padding bits and decode to the same signature.
    if response.status_code == 200:
        assert base64.urlsafe_b64decode(candidate.rsplit(".", 1)[1] + "==") == (
            base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
        )
        return
    assert response.status_code == 401, response.get_data(as_text=True)


def test_algorithm_confusion_with_the_rsa_public_key_is_refused(
    make_app: Callable[..., Flask], rsa_key: Any
) -> None:
    app = make_app(APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_PRIVATE_KEYS=[private_pem(rsa_key)])
    client = app.test_client()
    token = get_token(client, new_key(app).secret)["access_token"]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = compact(
        {**header, "alg": "HS256"},
        claims,
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )
    assert_token_refused(client.get("/v1/whoami", headers=bearer(forged)))
    assert client.get("/v1/whoami", headers=bearer(token)).status_code == 200


def test_a_deleted_key_s_tokens_are_refused(client: FlaskClient, app: Flask, issued: Any) -> None:
    key, header, claims = issued
    token = sign(claims, header)
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        db.session.execute(sa.delete(APIKey).where(APIKey.id == key.id))
        db.session.commit()
    app.extensions["apikeys"].cache.clear()  # as another process would see it after the TTL
    body = assert_token_refused(client.get("/v1/whoami", headers=bearer(token)))
    assert "no longer exists" in body["detail"]


def test_revocation_refuses_the_key_s_tokens_at_once(
    client: FlaskClient, app: Flask, apikeys: APIKeys
) -> None:
    key = new_key(app)
    token = get_token(client, key.secret)["access_token"]
    assert client.get("/v1/whoami", headers=bearer(token)).status_code == 200
    with app.app_context():
        apikeys.revoke_key(key.id, reason="Compromised")
    body = assert_token_refused(client.get("/v1/whoami", headers=bearer(token)))
    assert "revoked" in body["detail"]


def test_without_revocation_checks_a_token_lives_until_it_expires(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(**HS256, APIKEYS_JWT_CHECK_REVOCATION=False)
    client = app.test_client()
    key = new_key(app)
    token = get_token(client, key.secret)["access_token"]
    with app.app_context():
        app.extensions["apikeys"].extension.revoke_key(key.id, reason="Compromised")
    assert_problem(client.get("/v1/whoami", headers=bearer(key.secret)), 401, "revoked_api_key")
    assert client.get("/v1/whoami", headers=bearer(token)).status_code == 200


def test_an_inactive_organization_s_tokens_are_403(
    client: FlaskClient, app: Flask, apikeys: APIKeys
) -> None:
    key = new_key(app)
    token = get_token(client, key.secret)["access_token"]
    with app.app_context():
        apikeys.update_organization(key.organization_id, is_active=False)
    assert_problem(client.get("/v1/whoami", headers=bearer(token)), 403, "organization_inactive")


def test_narrowing_a_key_narrows_its_live_tokens(
    client: FlaskClient, app: Flask, apikeys: APIKeys
) -> None:
    key = new_key(app, scopes=["presentations:read", "presentations:write"])
    token = get_token(client, key.secret)["access_token"]
    assert client.post("/v1/presentations", headers=bearer(token)).status_code == 201
    with app.app_context():
        apikeys.update_key(key.id, scopes=["presentations:read"])
    assert_problem(
        client.post("/v1/presentations", headers=bearer(token)), 403, "insufficient_scope"
    )
    assert client.get("/v1/presentations", headers=bearer(token)).status_code == 200


def test_the_network_allowlist_applies_to_tokens(client: FlaskClient, app: Flask) -> None:
    key = new_key(app, allowed_networks=["10.0.0.0/8"])
    inside, outside = {"REMOTE_ADDR": "10.1.2.3"}, {"REMOTE_ADDR": "192.0.2.7"}
    response = client.post(TOKEN_PATH, headers=bearer(key.secret), environ_base=inside)
    token = response.get_json()["access_token"]
    assert client.get("/v1/whoami", headers=bearer(token), environ_base=inside).status_code == 200
    refused = client.get("/v1/whoami", headers=bearer(token), environ_base=outside)
    assert_problem(refused, 403, "ip_not_allowed")


# -- limits and usage -------------------------------------------------------------------------


def test_token_requests_count_against_the_issuing_key_s_rate_limit(
    client: FlaskClient, app: Flask
) -> None:
    key = new_key(app, rate_limit="4/minute")
    token = get_token(client, key.secret)["access_token"]  # 1
    assert client.get("/v1/whoami", headers=bearer(token)).status_code == 200  # 2
    assert client.get("/v1/whoami", headers=bearer(key.secret)).status_code == 200  # 3
    last = client.get("/v1/whoami", headers=bearer(token))  # 4
    assert last.status_code == 200 and last.headers["X-RateLimit-Remaining"] == "0"
    body = assert_problem(
        client.get("/v1/whoami", headers=bearer(token)), 429, "rate_limit_exceeded"
    )
    assert body["policy"] == "apikey"
    assert_problem(client.get("/v1/whoami", headers=bearer(key.secret)), 429, "rate_limit_exceeded")
    other = new_key(app, rate_limit="4/minute")
    assert client.get("/v1/whoami", headers=bearer(other.secret)).status_code == 200


def test_usage_rows_are_attributed_to_the_issuing_key(make_app: Callable[..., Flask]) -> None:
    app = make_app(**HS256, APIKEYS_USAGE_MODE="sync")
    client = app.test_client()
    key = new_key(app, scopes=["presentations:read"])
    token = get_token(client, key.secret, json={"scope": "presentations:read"})["access_token"]
    client.get("/v1/presentations", headers=bearer(token))
    client.post("/v1/presentations", headers=bearer(token))
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        rows = session.execute(sa.select(APIKeyUsage.api_key_id, APIKeyUsage.endpoint)).all()
        total = session.scalar(sa.select(APIKey.total_requests).where(APIKey.id == key.id))
    assert {row.api_key_id for row in rows} == {key.id}
    assert sorted(row.endpoint for row in rows) == [
        TOKEN_PATH,
        "/v1/presentations",
        "/v1/presentations",
    ]
    assert total == 3


def test_tokens_never_reach_the_logs(
    client: FlaskClient, app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = new_key(app)
    token = get_token(client, key.secret)["access_token"]
    client.get("/v1/whoami", headers=bearer(token))
    client.get("/v1/whoami", headers=bearer(token[:-4] + "AAAA"))
    app.extensions["apikeys"].writer.flush()
    assert token not in caplog.text and token.split(".")[2] not in caplog.text
    authority = app.extensions["apikeys"].tokens
    assert SECRET not in repr(authority.signing_key) and SECRET not in repr(authority.keys)


# -- JWKS and key rotation --------------------------------------------------------------------


def test_jwks_publishes_every_public_key_with_its_kid(
    make_app: Callable[..., Flask], rsa_key: Any, ec_key: Any
) -> None:
    app = make_app(
        APIKEYS_JWT_ENABLED=True,
        APIKEYS_JWT_PRIVATE_KEYS={"rsa-2026": private_pem(rsa_key), "ec-2025": private_pem(ec_key)},
    )
    client = app.test_client()
    response = client.get(JWKS_PATH)  # public: no key needed
    assert response.status_code == 200
    assert "max-age=300" in response.headers["Cache-Control"]
    published = {jwk["kid"]: jwk for jwk in response.get_json()["keys"]}
    assert set(published) == {"rsa-2026", "ec-2025"}
    assert published["rsa-2026"]["kty"] == "RSA" and published["rsa-2026"]["alg"] == "RS256"
    assert published["ec-2025"]["crv"] == "P-256" and published["ec-2025"]["alg"] == "ES256"
    for jwk in published.values():
        assert jwk["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk), "private members published"
    token = get_token(client, new_key(app).secret)["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == "rsa-2026"  # the first signs
    verifying_key = jwt.PyJWK(published["rsa-2026"]).key
    claims = jwt.decode(
        token, verifying_key, algorithms=["RS256"], audience="flask-apikeys", issuer="flask-apikeys"
    )
    assert claims["sub"]


def test_kids_derived_from_pems_are_stable_across_processes(
    make_app: Callable[..., Flask], rsa_key: Any
) -> None:
    config = {"APIKEYS_JWT_ENABLED": True, "APIKEYS_JWT_PRIVATE_KEYS": [private_pem(rsa_key)]}
    first, second = make_app(**config), make_app(**config)
    kids = [
        app.test_client().get(JWKS_PATH).get_json()["keys"][0]["kid"] for app in (first, second)
    ]
    assert kids[0] == kids[1] and len(kids[0]) == 43  # an RFC 7638 SHA-256 thumbprint
    token = get_token(first.test_client(), new_key(first).secret)["access_token"]
    assert second.test_client().get("/v1/whoami", headers=bearer(token)).status_code == 200


def test_signing_keys_rotate_without_refusing_live_tokens(
    make_app: Callable[..., Flask], rsa_key: Any, second_rsa_key: Any, ec_key: Any
) -> None:
    old, new = private_pem(rsa_key), private_pem(second_rsa_key)
    before = make_app(APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_PRIVATE_KEYS={"old": old})
    key = new_key(before)
    old_token = get_token(before.test_client(), key.secret)["access_token"]

    during = make_app(APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_PRIVATE_KEYS={"new": new, "old": old})
    client = during.test_client()
    assert client.get("/v1/whoami", headers=bearer(old_token)).status_code == 200
    new_token = get_token(client, key.secret)["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    assert [jwk["kid"] for jwk in client.get(JWKS_PATH).get_json()["keys"]] == ["new", "old"]

    after = make_app(APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_PRIVATE_KEYS={"new": new})
    client = after.test_client()
    assert client.get("/v1/whoami", headers=bearer(new_token)).status_code == 200
    body = assert_token_refused(client.get("/v1/whoami", headers=bearer(old_token)))
    assert "not signed by a key this service knows" in body["detail"]


def test_a_secret_still_verifies_while_moving_to_a_private_key(
    make_app: Callable[..., Flask], ec_key: Any
) -> None:
    before = make_app(**HS256)
    key = new_key(before)
    hs_token = get_token(before.test_client(), key.secret)["access_token"]
    after = make_app(**HS256, APIKEYS_JWT_PRIVATE_KEYS=[private_pem(ec_key)])
    client = after.test_client()
    assert client.get("/v1/whoami", headers=bearer(hs_token)).status_code == 200
    es_token = get_token(client, key.secret)["access_token"]
    assert jwt.get_unverified_header(es_token)["alg"] == "ES256"
    # The secret verifies but is never published.
    assert [jwk["alg"] for jwk in client.get(JWKS_PATH).get_json()["keys"]] == ["ES256"]


def test_with_only_a_secret_there_is_no_jwks(client: FlaskClient, app: Flask) -> None:
    key = new_key(app)
    assert client.get(JWKS_PATH, headers=bearer(key.secret)).status_code == 404


# -- feature off and configuration ------------------------------------------------------------


def test_when_off_a_jwt_is_an_invalid_key_and_there_is_no_token_route(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    client = app.test_client()
    token = jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
    assert_problem(client.get("/v1/whoami", headers=bearer(token)), 401, "invalid_api_key")
    key = new_key(app)
    assert client.post(TOKEN_PATH, headers=bearer(key.secret)).status_code == 404
    assert client.get(JWKS_PATH, headers=bearer(key.secret)).status_code == 404
    assert app.extensions["apikeys"].tokens is None


def test_enabling_tokens_without_pyjwt_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setattr(tokens, "PYJWT_INSTALLED", False)
    with pytest.raises(RuntimeError, match=r"flask-apikeys\[jwt\]"):
        create_app(database_url, **HS256)


def ec_pem_on(curve: ec.EllipticCurve) -> str:
    return private_pem(ec.generate_private_key(curve))


BAD_PEM = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "APIKEYS_JWT_SECRET"),
        ({"APIKEYS_JWT_SECRET": "too-short"}, "32 characters"),
        ({"APIKEYS_JWT_PRIVATE_KEYS": [BAD_PEM]}, "not a readable"),
        ({"APIKEYS_JWT_PRIVATE_KEYS": ["not a pem"]}, "not a PEM private key"),
        ({"APIKEYS_JWT_PRIVATE_KEYS": {"": BAD_PEM}}, "non-empty"),
        ({"APIKEYS_JWT_PRIVATE_KEYS": 42}, "a list of PEMs"),
        ({"APIKEYS_JWT_SECRET": SECRET, "APIKEYS_JWT_LIFETIME": 0}, "from 1 to 86400"),
        ({"APIKEYS_JWT_SECRET": SECRET, "APIKEYS_JWT_LIFETIME": "soon"}, "from 1 to 86400"),
        ({"APIKEYS_JWT_SECRET": SECRET, "APIKEYS_JWT_TOKEN_PATH": "token"}, "starts with"),
        ({"APIKEYS_JWT_SECRET": SECRET, "APIKEYS_JWT_ISSUER": ""}, "non-empty"),
    ],
)
def test_a_bad_token_configuration_stops_init_app(
    database_url: str, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match="APIKEYS_JWT_") as raised:
        create_app(database_url, APIKEYS_JWT_ENABLED=True, **config)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("make_pem", "message"),
    [
        (lambda: private_pem(rsa.generate_private_key(65537, 1024)), "2048"),  # noqa: S505
        (lambda: ec_pem_on(ec.SECP384R1()), "P-256"),
    ],
    ids=["rsa-1024", "ec-p384"],
)
def test_weak_or_unsupported_private_keys_are_refused(
    database_url: str, make_pem: Callable[[], str], message: str
) -> None:
    with pytest.raises(ConfigError, match="APIKEYS_JWT_PRIVATE_KEYS") as raised:
        create_app(database_url, APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_PRIVATE_KEYS=[make_pem()])
    assert message in str(raised.value)


def test_the_same_key_twice_is_refused(database_url: str, rsa_key: Any) -> None:
    pem = private_pem(rsa_key)
    with pytest.raises(ConfigError, match="twice"):
        create_app(database_url, APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_PRIVATE_KEYS=[pem, pem])


def test_token_defaults_are_off_with_a_fifteen_minute_lifetime() -> None:
    loaded = load_settings({}, {})
    assert loaded.jwt_enabled is False and loaded.jwt_check_revocation is True
    assert loaded.jwt_lifetime == 900 and loaded.jwt_token_path == TOKEN_PATH
    assert loaded.jwt_issuer == loaded.jwt_audience == "flask-apikeys"
    assert loaded.jwt_secret == () and loaded.jwt_private_keys == ()


def test_private_keys_and_secrets_come_from_the_environment(rsa_key: Any) -> None:
    pem = private_pem(rsa_key)
    loaded = load_settings(
        {},
        {
            "APIKEYS_JWT_ENABLED": "true",
            "APIKEYS_JWT_PRIVATE_KEYS": pem,
            "APIKEYS_JWT_SECRET": json.dumps([SECRET, SECRET + "-old"]),
            "APIKEYS_JWT_LIFETIME": "300",
        },
    )
    assert loaded.jwt_private_keys == ((None, pem),)
    assert loaded.jwt_secret == (SECRET, SECRET + "-old")
    assert loaded.jwt_lifetime == 300
    assert SECRET not in repr(loaded) and "PRIVATE KEY" not in repr(loaded)
    mapping = load_settings({}, {"APIKEYS_JWT_PRIVATE_KEYS": json.dumps({"k1": pem})})
    assert mapping.jwt_private_keys == (("k1", pem),)
