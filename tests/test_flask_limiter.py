"""Flask-Limiter integration: our key function and dynamic limit on a real ``Limiter``."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask_limiter import Limiter
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, current_key
from flask_apikeys.limiting import key_func, limit_for_key

from .test_auth import assert_problem


def build(
    database_url: str, *, limiter_first: bool, **limiter_options: Any
) -> tuple[Flask, APIKeys, Limiter]:
    """An app where Flask-Limiter's hook runs before ours (``limiter_first``) or after."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=database_url,
        # Our own limits are off so that every 429 below is Flask-Limiter's.
        APIKEYS_RATELIMIT_ENABLED=False,
    )
    db = SQLAlchemy(app)
    apikeys = APIKeys()
    limiter = Limiter(key_func=apikeys.key_func, storage_uri="memory://", **limiter_options)
    if limiter_first:
        limiter.init_app(app)
    apikeys.init_app(app, db=db)
    if not limiter_first:
        limiter.init_app(app)

    @app.get("/plain")
    def plain() -> dict[str, str]:
        return {"key": str(current_key.id)}

    @app.get("/dynamic")
    @limiter.limit(apikeys.limit_for_key, key_func=apikeys.key_func)
    def dynamic() -> dict[str, str]:
        return {"key": str(current_key.id)}

    with app.app_context():
        apikeys.create_all()
    return app, apikeys, limiter


def make_keys(app: Flask, apikeys: APIKeys, *rate_limits: str | None) -> list[Any]:
    with app.app_context():
        org = apikeys.create_organization(name="Acme", email="a@acme.io", plan="free")
        return [
            apikeys.create_key(org, f"k{n}", scopes=["*"], rate_limit=rate)
            for n, rate in enumerate(rate_limits)
        ]


def test_module_functions_are_the_extension_attributes() -> None:
    assert APIKeys.key_func is key_func and APIKeys.limit_for_key is limit_for_key


@pytest.mark.parametrize("limiter_first", [True, False], ids=["limiter-first", "apikeys-first"])
def test_default_limits_count_per_key_id_even_when_the_limiter_runs_first(
    database_url: str, limiter_first: bool
) -> None:
    app, apikeys, _ = build(database_url, limiter_first=limiter_first, default_limits=["2/minute"])
    first, second = make_keys(app, apikeys, None, None)
    client = app.test_client()

    def status(created: Any) -> int:
        return client.get("/plain", headers={"X-API-Key": created.key}).status_code

    assert [status(first) for _ in range(3)] == [200, 200, 429]
    assert [status(second) for _ in range(2)] == [200, 200]  # its own bucket, same address


def test_key_function_returns_the_key_id_never_the_key(database_url: str) -> None:
    app, apikeys, _ = build(database_url, limiter_first=True)
    (created,) = make_keys(app, apikeys, None)
    with app.test_request_context(headers={"X-API-Key": created.key}):
        assert apikeys.key_func() == f"apikey:{created.api_key.id}"
        assert apikeys.key_func() == f"apikey:{created.api_key.id}"  # safe to call twice
        assert created.key not in apikeys.key_func()
    with app.test_request_context(environ_base={"REMOTE_ADDR": "192.0.2.8"}):
        assert apikeys.key_func() == "192.0.2.8"
    with app.test_request_context(
        headers={"X-API-Key": "pk_live_" + "z" * 46}, environ_base={"REMOTE_ADDR": "192.0.2.9"}
    ):
        assert apikeys.key_func() == "192.0.2.9"  # a bad key is limited by address


def test_dynamic_limit_is_the_keys_effective_limit(database_url: str) -> None:
    app, apikeys, _ = build(database_url, limiter_first=True)
    custom, from_plan = make_keys(app, apikeys, "2/minute", None)
    with app.test_request_context(headers={"X-API-Key": from_plan.key}):
        assert apikeys.limit_for_key() == "10/minute"  # plan free
    with app.test_request_context():
        assert apikeys.limit_for_key() == "60/minute"  # APIKEYS_DEFAULT_RATE_LIMIT
    client = app.test_client()
    results = [
        client.get("/dynamic", headers={"X-API-Key": custom.key}).status_code for _ in range(3)
    ]
    assert results == [200, 200, 429]


def test_a_missing_key_is_still_our_401_behind_the_limiter(database_url: str) -> None:
    app, _, _ = build(database_url, limiter_first=True, default_limits=["100/minute"])
    assert_problem(app.test_client().get("/plain"), 401, "missing_api_key")


@pytest.mark.parametrize("how", ["argument", "registered"])
def test_an_existing_limiter_storage_is_reused(database_url: str, how: str) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI=database_url)
    db = SQLAlchemy(app)
    limiter = Limiter(key_func=key_func, app=app, storage_uri="memory://")
    apikeys = APIKeys(app, db=db, limiter=limiter if how == "argument" else None)

    @app.get("/r")
    def route() -> dict[str, bool]:
        return {"ok": True}

    with app.app_context():
        apikeys.create_all()
    (created,) = make_keys(app, apikeys, "1/minute")
    client = app.test_client()
    assert client.get("/r", headers={"X-API-Key": created.key}).status_code == 200
    assert client.get("/r", headers={"X-API-Key": created.key}).status_code == 429
    assert app.extensions["apikeys"].limits.counters.storage is limiter.storage
