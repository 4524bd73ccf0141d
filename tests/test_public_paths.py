"""What the hook leaves alone is decided by the endpoint Flask matched, never by a URL prefix.

Configured public paths match exactly unless written ``/prefix/*``; the admin API and the
token views are skipped by endpoint; a view with ``@require_scopes`` always goes through rate
limits, quota, the failed-attempt block and the read-only check, wherever it is mounted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask

from flask_apikeys import APIKeys, current_key, public, require_scopes
from flask_apikeys.config import ConfigError

from .factory import tampered
from .helpers import assert_problem

ADMIN_KEY = "bootstrap-" + "b" * 32


def add_route(app: Flask, path: str, view: Callable[..., Any], **options: Any) -> None:
    app.add_url_rule(path, view.__name__ + path, view, **options)


def anonymous_view(**_: Any) -> dict[str, Any]:
    return {"key": str(current_key.id) if current_key else None}


def key_in(app: Flask, **options: Any) -> str:
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        return apikeys.create_key(organization, "k", scopes=["reports:read"], **options).key


@pytest.mark.parametrize("public_path", ["/health", "/docs", "/openapi.json"])
def test_an_app_route_below_a_default_public_path_needs_a_key(
    make_app: Callable[..., Flask], public_path: str
) -> None:
    app = make_app()
    add_route(app, public_path + "/<item>", anonymous_view)
    client = app.test_client()
    assert_problem(client.get(public_path + "/42"), 401, "missing_api_key")
    assert client.get(public_path + "/42", headers={"X-API-Key": key_in(app)}).status_code == 200


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, "/admin/reports"),
        ({"APIKEYS_ADMIN_KEY": ADMIN_KEY}, "/admin/reports"),
        ({"APIKEYS_ADMIN_URL_PREFIX": "/ops"}, "/ops/reports"),
        ({}, "/admin"),
    ],
)
def test_an_app_route_under_the_admin_prefix_needs_a_key(
    make_app: Callable[..., Flask], config: dict[str, Any], path: str
) -> None:
    app = make_app(**config)
    add_route(app, path, anonymous_view)
    client = app.test_client()
    assert_problem(client.get(path), 401, "missing_api_key")
    assert client.get(path, headers={"X-API-Key": key_in(app)}).status_code == 200


def test_the_admin_api_still_authenticates_itself_and_unknown_admin_urls_are_404(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(APIKEYS_ADMIN_KEY=ADMIN_KEY, APIKEYS_FAILED_AUTH_LIMIT="2/minute")
    client = app.test_client()
    bootstrap = {"X-API-Key": ADMIN_KEY}
    assert client.get("/admin/organizations", headers=bootstrap).status_code == 200
    assert_problem(client.get("/admin/organizations"), 401, "missing_api_key")
    assert client.get("/admin/openapi.json").status_code == 200
    # No admin route here: Flask's 404/405, and the bootstrap key is not a failed attempt.
    for _ in range(3):
        assert client.get("/admin/no-such-thing", headers=bootstrap).status_code == 404
        assert client.delete("/admin/organizations", headers=bootstrap).status_code == 405
    assert client.get("/admin/organizations", headers=bootstrap).status_code == 200


def test_public_paths_match_exactly_unless_written_as_a_prefix(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(APIKEYS_PUBLIC_PATHS=["/status", "/files/*"])
    for path in ("/status", "/status/<item>", "/files", "/files/<path:name>"):
        add_route(app, path, anonymous_view)
    client = app.test_client()
    assert client.get("/status").get_json() == {"key": None}
    assert client.get("/status/").status_code in {200, 404, 308}  # Flask's slash rules
    assert client.get("/files/a/b.txt").get_json() == {"key": None}
    assert_problem(client.get("/status/1"), 401, "missing_api_key")
    assert_problem(client.get("/files"), 401, "missing_api_key")
    assert_problem(client.get("/health"), 401, "missing_api_key")  # no longer a default


@pytest.mark.parametrize("path", ["/a*", "/*", "/files/*/x", "/files*"])
def test_a_star_anywhere_but_the_end_of_a_prefix_is_refused(path: str, database_url: str) -> None:
    from .factory import create_app

    with pytest.raises(ConfigError, match="APIKEYS_PUBLIC_PATHS"):
        create_app(database_url, APIKEYS_PUBLIC_PATHS=["/health", path])


def test_a_blueprint_view_named_static_is_not_a_static_file(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    blueprint = Blueprint("reports", __name__, url_prefix="/reports")

    @blueprint.get("/files/<name>")
    def static(name: str) -> dict[str, Any]:
        return anonymous_view()

    app.register_blueprint(blueprint)
    assert_problem(app.test_client().get("/reports/files/x"), 401, "missing_api_key")


def test_static_files_stay_public(make_app: Callable[..., Flask], tmp_path: Any) -> None:
    app = make_app()
    (tmp_path / "site.css").write_text("body {}")
    blueprint = Blueprint(
        "theme",
        __name__,
        static_folder=str(tmp_path),
        static_url_path="/static",
        url_prefix="/theme",
    )
    app.register_blueprint(blueprint)
    with app.test_client().get("/theme/static/site.css") as response:
        assert response.status_code == 200 and response.get_data(as_text=True) == "body {}"


def scoped_view() -> dict[str, Any]:
    return {"key": str(current_key.id)}


def hidden_scopes(view: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator without functools.wraps: the hook cannot see the scopes below it."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return call


def mounted(app: Flask, how: str) -> str:
    """Mount a view needing ``reports:read`` where the hook would not authenticate it."""
    scoped = require_scopes("reports:read")(scoped_view)
    if how == "under a prefix pattern":
        add_route(app, "/docs/reports", scoped, methods=["GET", "POST"])
        return "/docs/reports"
    if how == "at an exact public path":
        add_route(app, "/ping", scoped, methods=["GET", "POST"])
        return "/ping"
    if how == "marked @public too":
        add_route(app, "/v1/reports", public(scoped), methods=["GET", "POST"])
        return "/v1/reports"
    add_route(app, "/ping", hidden_scopes(scoped), methods=["GET", "POST"])
    return "/ping"


PLACES = [
    "under a prefix pattern",
    "at an exact public path",
    "marked @public too",
    "behind a wrapper that hides the scopes",
]


def public_config(how: str) -> dict[str, Any]:
    paths = ["/docs", "/docs/*"] if how == "under a prefix pattern" else ["/ping"]
    return {"APIKEYS_PUBLIC_PATHS": paths}


@pytest.mark.parametrize("how", PLACES)
def test_a_scoped_view_is_rate_limited_wherever_it_is_mounted(
    make_app: Callable[..., Flask], how: str
) -> None:
    app = make_app(**public_config(how))
    path = mounted(app, how)
    key = key_in(app, rate_limit="2/minute")
    client = app.test_client()
    statuses = [client.get(path, headers={"X-API-Key": key}).status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    assert_problem(client.get(path), 401, "missing_api_key")


@pytest.mark.parametrize("how", PLACES)
def test_a_scoped_view_counts_failed_attempts_and_honours_the_block_wherever_it_is_mounted(
    make_app: Callable[..., Flask], how: str
) -> None:
    app = make_app(**public_config(how), APIKEYS_FAILED_AUTH_LIMIT="2/minute")
    path = mounted(app, how)
    key = key_in(app)
    client = app.test_client()
    for _ in range(2):
        assert_problem(
            client.get(path, headers={"X-API-Key": tampered(key)}), 401, "invalid_api_key"
        )
    assert_problem(
        client.get(path, headers={"X-API-Key": tampered(key)}), 429, "rate_limit_exceeded"
    )
    assert_problem(client.get(path, headers={"X-API-Key": key}), 429, "rate_limit_exceeded")


@pytest.mark.parametrize("how", PLACES)
def test_a_read_only_key_cannot_write_to_a_scoped_view_wherever_it_is_mounted(
    make_app: Callable[..., Flask], how: str
) -> None:
    app = make_app(**public_config(how))
    path = mounted(app, how)
    key = key_in(app, level="read-only")
    client = app.test_client()
    assert client.get(path, headers={"X-API-Key": key}).status_code == 200
    assert_problem(client.post(path, headers={"X-API-Key": key}), 403, "insufficient_scope")


def test_a_scoped_view_takes_one_unit_per_request_when_the_hook_already_limited_it(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    add_route(app, "/v1/reports", require_scopes("reports:read")(scoped_view))
    key = key_in(app, rate_limit="3/minute")
    client = app.test_client()
    statuses = [client.get("/v1/reports", headers={"X-API-Key": key}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_wrapped_scopes_survive_functools_wraps(make_app: Callable[..., Flask]) -> None:
    app = make_app(APIKEYS_PUBLIC_PATHS=["/ping"])

    def logged(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def call(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        return call

    add_route(app, "/ping", logged(require_scopes("reports:read")(scoped_view)))
    assert_problem(app.test_client().get("/ping"), 401, "missing_api_key")
