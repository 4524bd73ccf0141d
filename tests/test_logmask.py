"""No key or access token reaches a log, by any route: messages, arguments, exception chains
and groups, notes, stack traces, werkzeug's and gunicorn's access logs; and access tokens in
a URL are refused as keys are."""

from __future__ import annotations

import linecache
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from flask_apikeys import APIKeys
from flask_apikeys.models import AuditRecord

from .factory import tampered
from .helpers import assert_problem

JWT_SECRET = "j" * 40
ADMIN_KEY = "bootstrap-" + "e" * 32


@pytest.fixture
def jwt_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_SECRET=JWT_SECRET)


@pytest.fixture
def secrets_of(jwt_app: Flask) -> tuple[str, str]:
    """A key and an access token issued for it."""
    apikeys: APIKeys = jwt_app.extensions["apikeys"].extension
    with jwt_app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(organization, "k", scopes=["*"]).key
    response = jwt_app.test_client().post("/auth/token", headers={"X-API-Key": key})
    return key, response.get_json()["access_token"]


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Everything logged so far, as the records say it and as a handler prints it."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        printed = [handler.format(record) for record in caplog.records]
        return "\n".join(printed) + caplog.text

    return text


def assert_masked(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    assert "…[masked]" in text


def raise_chained(secret: str, how: str) -> None:
    if how == "cause":
        raise RuntimeError("lookup failed") from ValueError(secret)
    if how == "context":
        try:
            raise ValueError(secret)
        except ValueError:
            raise RuntimeError("lookup failed")  # noqa: B904 - implicit __context__ wanted
    if how == "context deep":
        try:
            try:
                raise KeyError(secret)
            except KeyError:
                raise ValueError("inner")  # noqa: B904 - implicit __context__ wanted
        except ValueError:
            raise RuntimeError("outer")  # noqa: B904 - implicit __context__ wanted
    if how == "group":
        raise ExceptionGroup("several failed", [ValueError("fine"), TypeError(secret)])
    if how == "note":
        error = RuntimeError("lookup failed")
        error.add_note(f"while checking {secret}")
        raise error
    raise AssertionError(how)


@pytest.mark.parametrize("secret_kind", ["key", "token"])
@pytest.mark.parametrize("how", ["cause", "context", "context deep", "group", "note"])
def test_a_secret_anywhere_in_an_exception_chain_is_masked(
    secrets_of: tuple[str, str], logged: Callable[[], str], how: str, secret_kind: str
) -> None:
    key, token = secrets_of
    secret = key if secret_kind == "key" else token
    try:
        raise_chained(secret, how)
    except Exception:
        logging.getLogger("app").exception("request failed")
    text = logged()
    assert "request failed" in text and "Traceback" in text
    assert_masked(text, secret)


def test_implicit_context_is_what_the_chain_test_raises(secrets_of: tuple[str, str]) -> None:
    """The "context" cases above really carry the secret in __context__ only."""
    key, _ = secrets_of
    with pytest.raises(RuntimeError) as raised:
        raise_chained(key, "context")
    assert raised.value.__cause__ is None and key in str(raised.value.__context__)


@pytest.mark.parametrize(
    "message",
    [
        "token {token}",
        "headers {{'Authorization': 'Bearer {token}'}}",
        "GET /v1/x?q={encoded_key} HTTP/1.1",
        "GET /v1/x?access_token={token} HTTP/1.1",
        "headers {{'Authorization': 'Api-Key {admin}'}}",
        "X-API-Key: {admin}",
    ],
)
def test_secrets_in_messages_and_arguments_are_masked(
    secrets_of: tuple[str, str], logged: Callable[[], str], message: str
) -> None:
    key, token = secrets_of
    values = {"token": token, "encoded_key": key.replace("_", "%5F"), "admin": ADMIN_KEY}
    logging.getLogger("app").warning("%s", message.format(**values))
    logging.getLogger("app").warning(message.format(**values))
    assert_masked(logged(), key, token, ADMIN_KEY, values["encoded_key"])


def test_a_stack_trace_with_a_secret_in_its_source_is_masked(
    secrets_of: tuple[str, str], logged: Callable[[], str]
) -> None:
    key, _ = secrets_of
    filename = "<generated-with-a-key>"
    source = f"logger.info('checking', stack_info=True)  # {key}\n"
    linecache.cache[filename] = (len(source), None, [source], filename)
    try:
        exec(compile(source, filename, "exec"), {"logger": logging.getLogger("app")})  # noqa: S102
    finally:
        linecache.cache.pop(filename, None)
    text = logged()
    assert "Stack (most recent call last)" in text
    assert_masked(text, key)


def test_an_access_token_in_the_url_is_refused_like_a_key(
    jwt_app: Flask, secrets_of: tuple[str, str]
) -> None:
    key, token = secrets_of
    client = jwt_app.test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/whoami", headers=bearer).status_code == 200
    for query in (f"access_token={token}", f"q={token}", "access_token=anything"):
        response = client.get(f"/v1/whoami?{query}", headers=bearer)
        body = assert_problem(response, 400, "api_key_in_url")
        assert token not in response.get_data(as_text=True) and "Access tokens" in body["detail"]


def test_token_parameters_pass_when_access_tokens_are_off(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(organization, "k", scopes=["*"]).key
    response = app.test_client().get("/v1/whoami?access_token=abc", headers={"X-API-Key": key})
    assert response.status_code == 200


@pytest.fixture
def served(jwt_app: Flask) -> Iterator[str]:
    """The app behind werkzeug's real development server, on a free port of 127.0.0.1."""
    server = make_server("127.0.0.1", 0, jwt_app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our server
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def test_werkzeug_access_log_never_prints_a_key_or_token(
    served: str,
    secrets_of: tuple[str, str],
    logged: Callable[[], str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    key, token = secrets_of
    assert fetch(f"{served}/v1/whoami?access_token={token}") == 400
    assert fetch(f"{served}/health?q={token}") == 200  # public: answered, but not logged whole
    assert fetch(f"{served}/health?q={key.replace('_', '%5F')}") == 200
    captured = capfd.readouterr()
    text = logged() + captured.out + captured.err
    assert "GET /v1/whoami?access_token=" in text  # the access log was written...
    assert_masked(text, key, token, key.replace("_", "%5F"))  # ...with nothing to steal


@pytest.mark.slow
def test_gunicorn_access_log_never_prints_a_key_or_token(tmp_path: Path) -> None:
    from .factory import create_app
    from .servers import gunicorn_workers

    database_url = f"sqlite:///{tmp_path / 'gunicorn.sqlite'}"
    app, _, apikeys = create_app(
        database_url, APIKEYS_JWT_ENABLED=True, APIKEYS_JWT_SECRET=JWT_SECRET
    )
    with app.app_context():
        apikeys.create_all()
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(organization, "k", scopes=["*"]).key
    token = (
        app.test_client().post("/auth/token", headers={"X-API-Key": key}).get_json()["access_token"]
    )
    app.extensions["apikeys"].writer.close()
    environment = {
        "TEST_DATABASE_URL": database_url,
        "APIKEYS_JWT_ENABLED": "true",
        "APIKEYS_JWT_SECRET": JWT_SECRET,
    }
    log = tmp_path / "gunicorn.log"
    access_format = '%(h)s "%(r)s" %(s)s "%({authorization}i)s" "%({x-api-key}i)s"'
    with gunicorn_workers(
        environment, log, "--access-logfile", "-", "--access-logformat", access_format
    ) as (_, port):
        base = f"http://127.0.0.1:{port}"
        assert fetch(f"{base}/v1/whoami?access_token={token}") == 400
        assert fetch(f"{base}/health?q={key}") == 200
        request = urllib.request.Request(f"{base}/v1/whoami", headers={"X-API-Key": key})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert response.status == 200
        request = urllib.request.Request(
            f"{base}/v1/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert response.status == 200
    text = log.read_text()
    assert "GET /v1/whoami?access_token=" in text
    assert_masked(text, key, token)


def test_a_token_in_the_path_of_a_refused_request_is_not_stored_or_logged_by_the_audit_trail(
    jwt_app: Flask,
    secrets_of: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, token = secrets_of
    caplog.set_level(logging.INFO, logger="flask_apikeys.audit")
    response = jwt_app.test_client().get(
        f"/v1/items/{token}/{key}", headers={"X-API-Key": tampered(key)}
    )
    assert_problem(response, 401, "invalid_api_key")
    apikeys: APIKeys = jwt_app.extensions["apikeys"].extension
    with jwt_app.app_context():
        apikeys.flush_usage()
        session = jwt_app.extensions["sqlalchemy"].session
        refused = session.scalars(
            sa.select(AuditRecord).where(AuditRecord.event == "auth.refused")
        ).one()
        assert refused.details["path"] == "/v1/items/[token]/[key]"
    audit_lines = [str(getattr(record, "audit", "")) for record in caplog.records]
    assert any("/v1/items/[token]/[key]" in line for line in audit_lines)
    assert not any(token in line or key in line for line in audit_lines)
