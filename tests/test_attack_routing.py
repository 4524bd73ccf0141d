"""Attack pass: requests that reach a view without a key by their method or their path's shape.

Public is decided by what will answer the request: a view that runs gets a key checked, unless
the view itself is public. Flask's own automatic ``OPTIONS`` answer (the view never runs) and
the configured public paths, matched exactly, are the only ways past the hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, request
from flask.views import MethodView
from flask_cors import CORS, cross_origin

from flask_apikeys import require_scopes

from .helpers import assert_problem

SECRET_BODY = {"secret": "the view ran"}


def add_views_answering_options(app: Flask) -> None:
    """Views that handle ``OPTIONS`` themselves, as apps that "enable CORS" by hand do."""

    @app.route("/v1/report", methods=["GET", "OPTIONS"])
    def report() -> dict[str, Any]:
        return SECRET_BODY

    @app.route("/v1/scoped-report", methods=["GET", "OPTIONS"])
    @require_scopes("reports:read")
    def scoped_report() -> dict[str, Any]:
        return SECRET_BODY

    class Items(MethodView):
        def get(self) -> dict[str, Any]:
            return SECRET_BODY

        def options(self) -> dict[str, Any]:
            return {**SECRET_BODY, "method": request.method}

    app.add_url_rule("/v1/attack-items", view_func=Items.as_view("attack_items"))

    @app.get("/v1/automatic")
    def automatic() -> dict[str, Any]:
        return SECRET_BODY


@pytest.mark.parametrize("path", ["/v1/report", "/v1/scoped-report", "/v1/attack-items"])
def test_a_view_that_answers_options_itself_needs_a_key_for_it(app: Flask, path: str) -> None:
    add_views_answering_options(app)
    response = app.test_client().options(path)
    assert_problem(response, 401, "missing_api_key")
    assert b"the view ran" not in response.data


def test_a_view_that_answers_options_itself_runs_for_a_key_with_the_scope(
    app: Flask, make_key: Callable[..., str]
) -> None:
    add_views_answering_options(app)
    client = app.test_client()
    key = make_key(scopes=["reports:read"])
    assert client.options("/v1/scoped-report", headers={"X-API-Key": key}).json == SECRET_BODY
    other = make_key(scopes=["presentations:read"])
    response = client.options("/v1/scoped-report", headers={"X-API-Key": other})
    assert_problem(response, 403, "insufficient_scope")


def test_flasks_own_options_answer_still_needs_no_key(app: Flask) -> None:
    """A CORS preflight carries no credential: where Flask answers it (the view never runs),
    it passes as before."""
    add_views_answering_options(app)
    response = app.test_client().options(
        "/v1/automatic", headers={"Access-Control-Request-Method": "GET"}
    )
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "OPTIONS"}
    assert b"the view ran" not in response.data


PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}


def test_flask_cors_preflights_pass_without_a_key_and_requests_still_need_one(app: Flask) -> None:
    """``CORS(app)``, flask-cors' usual setup: Flask answers the preflight, flask-cors adds its
    headers, no view runs."""
    CORS(app)
    client = app.test_client()
    preflight = client.options("/v1/presentations", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] in {"*", "https://app.example"}
    assert_problem(
        client.get("/v1/presentations", headers={"Origin": "https://app.example"}),
        401,
        "missing_api_key",
    )


def test_flask_cors_cross_origin_answers_options_inside_the_view_so_it_needs_a_key(
    app: Flask, make_key: Callable[..., str]
) -> None:
    """``@cross_origin`` turns Flask's automatic answer off and answers OPTIONS from inside
    the view's wrapper: the extension cannot tell that wrapper from a view that serves data on
    OPTIONS, so it asks for a key (docs/quickstart.rst: use ``CORS(app)`` for preflights)."""

    @app.route("/v1/cross-origin")
    @cross_origin()
    def cross() -> dict[str, Any]:
        return SECRET_BODY

    client = app.test_client()
    assert_problem(client.options("/v1/cross-origin", headers=PREFLIGHT), 401, "missing_api_key")
    answered = client.options("/v1/cross-origin", headers={**PREFLIGHT, "X-API-Key": make_key()})
    assert answered.status_code == 200 and b"the view ran" not in answered.data
    assert answered.headers["Access-Control-Allow-Origin"] in {"*", "https://app.example"}


def add_catch_all(app: Flask) -> None:
    """A catch-all route (a single-page app's or a proxy's), and a route written with a slash."""

    @app.get("/<path:anything>")
    def catch_all(anything: str) -> dict[str, Any]:
        return {**SECRET_BODY, "path": anything}

    @app.get("/status/")
    def status_with_slash() -> dict[str, Any]:
        return {"ok": True}


@pytest.mark.parametrize(
    "path", ["/health/", "/health//", "/health%2F", "/docs/", "/openapi.json/", "/openapi.json//"]
)
def test_a_public_path_with_slashes_added_is_not_public_for_a_catch_all(
    app: Flask, path: str
) -> None:
    add_catch_all(app)
    response = app.test_client().get(path)
    assert_problem(response, 401, "missing_api_key")
    assert b"the view ran" not in response.data


@pytest.mark.parametrize("app_config", [{"APIKEYS_PUBLIC_PATHS": ["/status", "/health"]}])
def test_a_route_written_with_the_slash_of_a_public_path_stays_public(app: Flask) -> None:
    """The one trailing slash the docs allow: the app's own route is ``/status/``."""
    add_catch_all(app)
    client = app.test_client()
    assert client.get("/status/").json == {"ok": True}
    assert client.get("/status", follow_redirects=True).json == {"ok": True}
    assert client.get("/health").json == {"status": "ok"}
    assert_problem(client.get("/status//"), 401, "missing_api_key")
