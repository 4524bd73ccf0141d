"""The response step: rate-limit headers and the usage row, added as the response starts.

It runs around ``app.wsgi_app`` rather than as an ``after_request`` hook, so these tests check
what that changes for an app: the row and headers describe the response the client gets, after
the app's own hooks; middleware on either side keeps working; an error of ours never costs
the client its response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, Response
from flask_sqlalchemy import SQLAlchemy
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.middleware.shared_data import SharedDataMiddleware

from flask_apikeys import APIKeys, require_scopes
from flask_apikeys.environ import RESULT_ENVIRON_KEY
from flask_apikeys.errors import _single_line
from flask_apikeys.models import APIKeyUsage

from .factory import app_metadata

AppBuilder = Callable[..., tuple[Flask, APIKeys, str]]


@pytest.fixture
def build_app(
    database_url: str, create_tables: Callable[[Flask, APIKeys], None]
) -> Iterator[AppBuilder]:
    """An app with one scoped route, ``/v1/thing``, and a key for it. ``before_init`` gets the
    app before the extension does (to register hooks or middleware first)."""
    built: list[tuple[Flask, APIKeys]] = []

    def build(before_init: Callable[[Flask], None] | None = None, **config: Any) -> Any:
        app = Flask(__name__)
        app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI=database_url, **config)
        if before_init is not None:
            before_init(app)
        db = SQLAlchemy(metadata=app_metadata())
        db.init_app(app)
        apikeys = APIKeys(app, db=db)

        @app.get("/v1/thing")
        @require_scopes("things:read")
        def thing() -> dict[str, bool]:
            return {"ok": True}

        create_tables(app, apikeys)
        with app.app_context():
            organization = apikeys.create_organization(name="Acme", email="a@acme.com")
            key = apikeys.create_key(organization.id, "k", scopes=["things:read"]).key
        built.append((app, apikeys))
        return app, apikeys, key

    yield build
    for app, apikeys in built:
        apikeys.close(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def usage_statuses(app: Flask, apikeys: APIKeys) -> list[int]:
    with app.app_context():
        apikeys.flush_usage()
        session = app.extensions["sqlalchemy"].session
        return list(session.scalars(sa.select(APIKeyUsage.status_code).order_by(APIKeyUsage.id)))


def test_the_usage_row_and_headers_describe_the_response_the_app_finally_sends(
    build_app: AppBuilder,
) -> None:
    """An app hook registered before the extension ran after ours: the row said 200 where the
    client got 202."""

    def accept_later(app: Flask) -> None:
        @app.after_request
        def accepted(response: Response) -> Response:
            response.status_code = 202
            return response

    app, apikeys, key = build_app(accept_later)
    response = app.test_client().get("/v1/thing", headers={"X-API-Key": key})
    assert response.status_code == 202
    assert response.headers.getlist("X-RateLimit-Remaining") != []
    assert usage_statuses(app, apikeys) == [202]


def test_an_app_hook_sees_the_response_before_our_headers_are_added(
    build_app: AppBuilder,
) -> None:
    """What changed with the step, pinned: an ``after_request`` hook of the app sees the
    response as the view made it; the client gets our headers once, beside the app's own."""
    seen: list[list[str]] = []
    app, apikeys, key = build_app()

    @app.after_request
    def look(response: Response) -> Response:
        seen.append(response.headers.getlist("X-RateLimit-Limit"))
        response.headers["X-App"] = "yes"
        return response

    response = app.test_client().get("/v1/thing", headers={"X-API-Key": key})
    assert response.status_code == 200 and response.headers["X-App"] == "yes"
    assert seen == [[]]
    assert len(response.headers.getlist("X-RateLimit-Limit")) == 1
    assert len(response.headers.getlist("X-RateLimit-Reset")) == 1


def test_middleware_wrapped_after_the_extension_still_gets_our_headers_and_row(
    build_app: AppBuilder,
) -> None:
    app, apikeys, key = build_app()
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    response = app.test_client().get(
        "/v1/thing", headers={"X-API-Key": key, "X-Forwarded-For": "203.0.113.9"}
    )
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"].isdigit()
    assert usage_statuses(app, apikeys) == [200]
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        assert session.scalar(sa.select(APIKeyUsage.ip_address)) == "203.0.113.9"


def test_a_response_made_by_middleware_inside_the_extension_passes_untouched(
    build_app: AppBuilder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Middleware the app wrapped before ``init_app`` answers without Flask: there is no
    request context and no key, and the step must neither fail nor add anything."""
    (tmp_path / "robots.txt").write_text("User-agent: *\n")

    def serve_files(app: Flask) -> None:
        app.wsgi_app = SharedDataMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, {"/files": str(tmp_path)}
        )

    app, apikeys, key = build_app(serve_files)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_apikeys"):
        served = client.get("/files/robots.txt", headers={"X-API-Key": key}, buffered=True)
        served.close()
        missing = client.get("/files/nothing.txt")
    assert served.status_code == 200 and served.data == b"User-agent: *\n"
    assert "X-RateLimit-Limit" not in served.headers
    assert missing.status_code == 401  # not a file: Flask answers, and wants a key
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert usage_statuses(app, apikeys) == []
    assert caplog.records == []


def test_an_error_of_ours_while_the_response_starts_is_logged_and_the_response_sent(
    build_app: AppBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    app, apikeys, key = build_app()

    @app.get("/v1/spoiled")
    @require_scopes("things:read")
    def spoiled() -> dict[str, bool]:
        from flask import request

        request.environ[RESULT_ENVIRON_KEY] = "not what the limits left"
        return {"ok": True}

    with caplog.at_level(logging.ERROR, logger="flask_apikeys"):
        response = app.test_client().get("/v1/spoiled", headers={"X-API-Key": key})
    assert response.status_code == 200 and response.json == {"ok": True}
    assert "X-RateLimit-Limit" not in response.headers
    assert [record.getMessage() for record in caplog.records] == [
        "flask-apikeys could not add its headers or usage row"
    ]


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "a\x0bb", "plain"])
def test_a_restored_header_value_is_one_line(value: str) -> None:
    line = _single_line(value)
    assert "\r" not in line and "\n" not in line and len(line.splitlines()) == 1
    assert line.replace(" ", "") == "".join(value.splitlines()).replace(" ", "")
