"""An address blocked for failed attempts gets 429 before any credential of it is compared.

Every credential path: a stored key on an app route, the bootstrap admin key and an
organization's admin key on the admin API, the token endpoint, and a key verified early by a
Flask-Limiter key function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask_limiter import Limiter
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, current_key
from flask_apikeys.models import AuditRecord

from .factory import tampered
from .helpers import assert_problem

ADMIN_KEY = "bootstrap-" + "c" * 32
BLOCKED = "203.0.113.9"
ELSEWHERE = "198.51.100.7"
JWT_SECRET = "s" * 40


def call(client: FlaskClient, method: str, path: str, key: str, address: str = BLOCKED) -> Any:
    return client.open(
        path, method=method, headers={"X-API-Key": key}, environ_base={"REMOTE_ADDR": address}
    )


@pytest.fixture
def blocking_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(
        APIKEYS_ADMIN_KEY=ADMIN_KEY,
        APIKEYS_FAILED_AUTH_LIMIT="2/minute",
        APIKEYS_JWT_ENABLED=True,
        APIKEYS_JWT_SECRET=JWT_SECRET,
    )


def keys_of(app: Flask) -> dict[str, str]:
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        return {
            "ordinary": apikeys.create_key(organization, "o", scopes=["*"]).key,
            "admin": apikeys.create_key(organization, "a", scopes=["admin"]).key,
        }


#: (method, path, which credential) of every path that compares a credential.
CREDENTIAL_PATHS = {
    "stored key on an app route": ("GET", "/v1/whoami", "ordinary"),
    "bootstrap admin key": ("GET", "/admin/organizations", "bootstrap"),
    "organization admin key": ("GET", "/admin/organizations", "admin"),
    "key at the token endpoint": ("POST", "/auth/token", "ordinary"),
}


def credential(keys: dict[str, str], which: str) -> str:
    return ADMIN_KEY if which == "bootstrap" else keys[which]


@pytest.mark.parametrize("blocked_by", list(CREDENTIAL_PATHS))
@pytest.mark.parametrize("tried", list(CREDENTIAL_PATHS))
def test_a_blocked_address_gets_429_for_every_right_credential(
    blocking_app: Flask, blocked_by: str, tried: str
) -> None:
    keys = keys_of(blocking_app)
    client = blocking_app.test_client()
    method, path, which = CREDENTIAL_PATHS[blocked_by]
    wrong = "x" * 40 if which == "bootstrap" else tampered(credential(keys, which))
    for _ in range(2):
        assert_problem(call(client, method, path, wrong), 401, "invalid_api_key")
    assert_problem(call(client, method, path, wrong), 429, "rate_limit_exceeded")
    method, path, which = CREDENTIAL_PATHS[tried]
    right = credential(keys, which)
    body = assert_problem(call(client, method, path, right), 429, "rate_limit_exceeded")
    assert body["policy"] == "failed-authentication"
    assert call(client, method, path, right, ELSEWHERE).status_code == 200


def test_a_blocked_address_gets_429_for_an_access_token_too(blocking_app: Flask) -> None:
    keys = keys_of(blocking_app)
    client = blocking_app.test_client()
    token = call(client, "POST", "/auth/token", keys["ordinary"]).get_json()["access_token"]
    for _ in range(3):
        call(client, "GET", "/v1/whoami", tampered(keys["ordinary"]))
    response = client.get(
        "/v1/whoami",
        headers={"Authorization": f"Bearer {token}"},
        environ_base={"REMOTE_ADDR": BLOCKED},
    )
    assert_problem(response, 429, "rate_limit_exceeded")


def refused_attempts(app: Flask) -> int:
    with app.app_context():
        app.extensions["apikeys"].extension.flush_usage()
        session = app.extensions["sqlalchemy"].session
        query = sa.select(sa.func.count()).where(AuditRecord.event == "auth.refused")
        return int(session.scalar(query.select_from(AuditRecord)))


def test_a_key_function_that_runs_first_does_not_look_at_a_blocked_address_credential(
    database_url: str,
) -> None:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=database_url,
        APIKEYS_FAILED_AUTH_LIMIT="2/minute",
        APIKEYS_USAGE_MODE="sync",
    )
    db = SQLAlchemy(app)
    apikeys = APIKeys()
    # Flask-Limiter's hook first: its key function verifies the key before our hook runs.
    Limiter(
        key_func=apikeys.key_func, storage_uri="memory://", default_limits=["1000/minute"], app=app
    )
    apikeys.init_app(app, db=db)

    @app.get("/plain")
    def plain() -> dict[str, str]:
        return {"key": str(current_key.id)}

    with app.app_context():
        apikeys.create_all()
    try:
        keys = keys_of(app)
        client = app.test_client()
        wrong = tampered(keys["ordinary"])
        for _ in range(3):
            call(client, "GET", "/plain", wrong)
        counted = refused_attempts(app)
        assert counted == 3
        for _ in range(3):
            assert_problem(call(client, "GET", "/plain", wrong), 429, "rate_limit_exceeded")
            assert_problem(
                call(client, "GET", "/plain", keys["ordinary"]), 429, "rate_limit_exceeded"
            )
        assert refused_attempts(app) == counted  # not one more credential was looked at
    finally:
        app.extensions["apikeys"].writer.close()
        with app.app_context():
            db.engine.dispose()


def test_an_ipv6_client_cannot_escape_the_block_by_changing_its_address(
    blocking_app: Flask,
) -> None:
    """A host on IPv6 is handed a /64 and picks any of its 2**64 addresses: the failed
    attempts of a /64 count together, and its block covers the whole /64 (IPv4, and other
    /64s, stay apart)."""
    keys = keys_of(blocking_app)
    client = blocking_app.test_client()
    wrong = tampered(keys["ordinary"])
    for host in (1, 2):
        refused = call(client, "GET", "/v1/whoami", wrong, f"2001:db8:aa:bb::{host}")
        assert_problem(refused, 401, "invalid_api_key")
    # Past the limit: another address of the same /64 is refused before any comparison,
    # its right key included.
    assert_problem(
        call(client, "GET", "/v1/whoami", wrong, "2001:db8:aa:bb:ffff::3"),
        429,
        "rate_limit_exceeded",
    )
    assert_problem(
        call(client, "GET", "/v1/whoami", keys["ordinary"], "2001:db8:aa:bb::9"),
        429,
        "rate_limit_exceeded",
    )
    assert (
        call(client, "GET", "/v1/whoami", keys["ordinary"], "2001:db8:aa:cc::1").status_code == 200
    )
    assert call(client, "GET", "/v1/whoami", keys["ordinary"], ELSEWHERE).status_code == 200


@pytest.mark.parametrize("path", ["/auth/introspect", "/auth/revoke"])
def test_a_blocked_address_gets_429_for_the_bootstrap_key_at_the_oauth_endpoints(
    blocking_app: Flask, path: str
) -> None:
    """Introspection and revocation take the bootstrap key in a header too: a blocked
    address must not be able to try it there (it was compared before the block was read)."""
    keys = keys_of(blocking_app)
    client = blocking_app.test_client()
    for _ in range(3):
        call(client, "GET", "/v1/whoami", tampered(keys["ordinary"]))
    form = {"token": keys["ordinary"]}
    for address, status in ((BLOCKED, 429), (ELSEWHERE, 200)):
        response = client.post(
            path,
            headers={"X-API-Key": ADMIN_KEY},
            data=form if path.endswith("introspect") else {"token": "not-a-key"},
            environ_base={"REMOTE_ADDR": address},
        )
        assert response.status_code == status, response.get_data(as_text=True)
    refused = client.post(
        path,
        headers={"X-API-Key": ADMIN_KEY},
        data=form,
        environ_base={"REMOTE_ADDR": BLOCKED},
    )
    assert refused.get_json()["error"] == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1
