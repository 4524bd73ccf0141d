"""The test apps' shared URL builders (``tests/routing.py``) and the admin API's shared route
map: each app still routes and builds its own URLs exactly as with werkzeug's own rules."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from werkzeug.routing import Map, Rule

from flask_apikeys.admin import admin_route_map, make_admin_blueprint

from .factory import create_app
from .routing import SharedBuilderRule, SharedRoutingFlask, shared_builders_compiled

ADMIN_KEY = "bootstrap-" + "r" * 32


def url_arguments(rule: Rule) -> dict[str, str]:
    """A value for each variable of ``rule``, and one query argument to be appended."""
    return {**{name: f"value-{name}" for name in sorted(rule.arguments)}, "extra": "a b/ü"}


def every_built_url(app: Flask) -> dict[tuple[str, str], str]:
    """Every rule of ``app`` built through its map, with and without an unknown argument."""
    adapter = app.url_map.bind("api.example.com", script_name="/mounted")
    built = {}
    for rule in app.url_map.iter_rules():
        arguments = url_arguments(rule)
        known = {name: arguments[name] for name in rule.arguments}
        built[(rule.endpoint, rule.rule)] = adapter.build(rule.endpoint, known)
        built[(rule.endpoint, rule.rule + "?")] = adapter.build(rule.endpoint, arguments)
    return built


def test_test_apps_build_every_url_exactly_as_werkzeug_rules_do(tmp_path: Any) -> None:
    shared, _, _ = create_app(f"sqlite:///{tmp_path / 'shared.sqlite'}")
    assert isinstance(next(iter(shared.url_map.iter_rules())), SharedBuilderRule)

    original = SharedRoutingFlask.url_rule_class
    SharedRoutingFlask.url_rule_class = Rule  # the same factory, werkzeug's own rules
    try:
        plain, _, _ = create_app(f"sqlite:///{tmp_path / 'plain.sqlite'}")
    finally:
        SharedRoutingFlask.url_rule_class = original
    assert not any(isinstance(rule, SharedBuilderRule) for rule in plain.url_map.iter_rules())

    expected = every_built_url(plain)
    assert len(expected) > 20 and any("<" in rule for _, rule in expected)
    assert every_built_url(shared) == expected
    assert shared.url_map.bind("x").build("items") == "/v1/items"


def test_a_second_app_reuses_the_builders_and_each_binds_them_to_its_own_rules(
    tmp_path: Any,
) -> None:
    """The builders are compiled once (the point), yet every rule's builder reads that rule:
    two apps whose ``/admin`` routes differ only in their prefix build different URLs."""
    first, _, _ = create_app(f"sqlite:///{tmp_path / 'a.sqlite'}")
    compiled = shared_builders_compiled()
    second, _, _ = create_app(f"sqlite:///{tmp_path / 'b.sqlite'}")
    assert shared_builders_compiled() == compiled  # nothing new: every builder was reused
    third, _, _ = create_app(
        f"sqlite:///{tmp_path / 'c.sqlite'}", APIKEYS_ADMIN_URL_PREFIX="/elsewhere"
    )
    arguments = {"org_id": "o-1", "key_id": "k-2"}
    for app, prefix in ((first, "/admin"), (second, "/admin"), (third, "/elsewhere")):
        adapter = app.url_map.bind("localhost")
        assert adapter.build("apikeys_admin.rotate_key", arguments) == (
            f"{prefix}/organizations/o-1/keys/k-2/rotate"
        )


def test_a_rule_with_defaults_is_compiled_as_usual_and_builds_its_defaults() -> None:
    app = SharedRoutingFlask(__name__)

    def page(number: int) -> str:
        return str(number)

    app.add_url_rule("/page/<int:number>", "page", page)
    app.add_url_rule("/page/", "page", page, defaults={"number": 1})
    with app.test_request_context():
        adapter = app.url_map.bind("localhost")
        assert adapter.build("page", {"number": 1}) == "/page/"
        assert adapter.build("page", {"number": 7}) == "/page/7"
    client = app.test_client()
    assert client.get("/page/").text == "1"
    assert client.get("/page/7").text == "7"


def test_every_admin_blueprint_shares_one_route_map_that_no_app_can_change(
    tmp_path: Any,
) -> None:
    """The admin API's own route map (404 or 405, OPTIONS) is built once and only read: two
    apps at different prefixes answer from it alike, neither adds to it."""
    make_admin_blueprint("/one")
    shared = admin_route_map.cache_info()
    make_admin_blueprint("/two")
    assert admin_route_map.cache_info().hits == shared.hits + 1
    assert admin_route_map.cache_info().currsize == shared.currsize

    (key,) = admin_route_keys()
    the_map = admin_route_map(key)
    rules_before = sorted(str(rule) for rule in the_map.iter_rules())
    apps = [
        create_app(
            f"sqlite:///{tmp_path / f'{n}.sqlite'}",
            APIKEYS_ADMIN_URL_PREFIX=prefix,
            APIKEYS_ADMIN_KEY=ADMIN_KEY,
        )[0]
        for n, prefix in enumerate(("/admin", "/ops/admin"))
    ]
    as_admin = {"X-API-Key": ADMIN_KEY}
    for app, prefix in zip(apps, ("/admin", "/ops/admin"), strict=True):
        client = app.test_client()
        options = client.options(f"{prefix}/organizations/some-id/keys")
        assert options.status_code == 204
        assert options.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
        wrong_method = client.delete(f"{prefix}/organizations", headers=as_admin)
        assert wrong_method.status_code == 405
        assert wrong_method.mimetype == "application/problem+json"
        assert client.get(f"{prefix}/no-such-route", headers=as_admin).status_code == 404
    assert sorted(str(rule) for rule in the_map.iter_rules()) == rules_before


def admin_route_keys() -> list[tuple[tuple[str, str, str], ...]]:
    """The argument ``make_admin_blueprint`` passes to ``admin_route_map``."""
    from flask_apikeys.admin.views import OPERATIONS

    return [tuple((op.path, op.endpoint, op.method) for op in OPERATIONS)]


@pytest.mark.parametrize("path", ["/organizations", "/organizations/x/keys/y/rotate"])
def test_the_shared_admin_route_map_matches_like_a_fresh_one(path: str) -> None:
    (key,) = admin_route_keys()
    fresh = Map(
        [Rule(p, endpoint=e, methods=[m, "OPTIONS"]) for p, e, m in key]
        + [Rule("/openapi.json", endpoint="openapi", methods=["GET", "OPTIONS"])]
    )
    shared = admin_route_map(key)
    assert shared is admin_route_map(key)
    assert shared.bind("localhost").allowed_methods(path) == fresh.bind(
        "localhost"
    ).allowed_methods(path)
