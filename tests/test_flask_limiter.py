"""Flask-Limiter integration: our key function and dynamic limit on a real ``Limiter``."""

from __future__ import annotations

import importlib.util
import logging
import math
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from flask_limiter import Limiter
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, current_key
from flask_apikeys.limiting.flask_limiter import key_func, limit_for_key
from flask_apikeys.limiting.headers import flask_limiter_writes_headers

from .helpers import assert_problem


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


@pytest.mark.parametrize("limiter_first", [True, False], ids=["limiter-first", "apikeys-first"])
def test_a_flask_limiter_refusal_has_retry_after_when_our_limits_are_off(
    database_url: str, limiter_first: bool
) -> None:
    """Flask-Limiter doing all the limiting (``APIKEYS_RATELIMIT_ENABLED = False``), its own
    headers off as the docs recommend: its 429 still says when to retry, and which limit."""
    app, apikeys, _ = build(database_url, limiter_first=limiter_first, default_limits=["2/minute"])
    (created,) = make_keys(app, apikeys, None)
    client = app.test_client()
    served = client.get("/plain", headers={"X-API-Key": created.key})
    assert "X-RateLimit-Limit" not in served.headers  # nothing of ours is counted
    client.get("/plain", headers={"X-API-Key": created.key})
    refused = client.get("/plain", headers={"X-API-Key": created.key})
    assert refused.status_code == 429
    assert refused.headers.getlist("X-RateLimit-Limit") == ["2"]
    assert refused.headers.getlist("X-RateLimit-Remaining") == ["0"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 61


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


# -- side by side: headers of a refusal by either library, and the app's own error handlers ----

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "limiter_app.py"


def load_example() -> ModuleType:
    """The docs' example module, loaded afresh (its extension objects are module globals)."""
    spec = importlib.util.spec_from_file_location(f"limiter_app_{uuid.uuid4().hex}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_app(database_url: str, **config: Any) -> tuple[Flask, Any, Any]:
    """The docs' app, a key with the free plan's 10/minute and a custom key of 100/minute."""
    example = load_example()
    app = example.create_app(database_url)
    app.config.update(TESTING=True, **config)
    with app.app_context():
        example.apikeys.create_all()
        org = example.apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        created = example.apikeys.create_key(org, "k", scopes=["*"], rate_limit="100/minute")
    return app, example, created


def test_a_flask_limiter_refusal_carries_its_own_limit_and_retry_after(database_url: str) -> None:
    app, _, created = example_app(database_url)
    client = app.test_client()
    headers = {"X-API-Key": created.key}
    first = client.post("/v1/exports", headers=headers)
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "60"  # ours: the pro plan's 60/minute
    client.post("/v1/exports", headers=headers)
    refused = client.post("/v1/exports", headers=headers)
    assert refused.status_code == 429 and refused.json == {"error": "slow down"}
    # The headers describe Flask-Limiter's 2/minute, which refused, each once; not our 100.
    assert refused.headers.getlist("X-RateLimit-Limit") == ["2"]
    assert refused.headers.getlist("X-RateLimit-Remaining") == ["0"]
    reset = int(refused.headers["X-RateLimit-Reset"])
    assert 0 < reset - time.time() <= 61
    assert int(refused.headers["Retry-After"]) - math.ceil(reset - time.time()) in (0, 1)


def test_our_refusal_keeps_retry_after_under_the_apps_own_429_handler(
    database_url: str,
) -> None:
    app, example, created = example_app(database_url)
    with app.app_context():
        example.apikeys.update_key(created.api_key.id, rate_limit="1/minute")
    client = app.test_client()
    assert client.post("/v1/exports", headers={"X-API-Key": created.key}).status_code == 200
    refused = client.post("/v1/exports", headers={"X-API-Key": created.key})
    assert refused.status_code == 429 and refused.json == {"error": "slow down"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 120  # a sliding window: up to two
    assert refused.headers.getlist("X-RateLimit-Limit") == ["1"]


def test_a_missing_key_keeps_www_authenticate_under_the_apps_own_401_handler(
    database_url: str,
) -> None:
    app, _, _ = example_app(database_url)
    response = app.test_client().post("/v1/exports")
    assert response.status_code == 401 and response.json == {"error": "who are you?"}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize("limiter_first", [True, False], ids=["limiter-first", "apikeys-first"])
def test_both_libraries_writing_headers_is_warned_about_at_start(
    database_url: str, limiter_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    app.config.update(
        TESTING=True, SQLALCHEMY_DATABASE_URI=database_url, RATELIMIT_HEADERS_ENABLED=True
    )
    db = SQLAlchemy(app)
    apikeys = APIKeys()
    limiter = Limiter(key_func=apikeys.key_func, storage_uri="memory://")
    with caplog.at_level(logging.WARNING, logger="flask_apikeys"):
        if limiter_first:
            limiter.init_app(app)
            apikeys.init_app(app, db=db)
        else:  # found at the first request, when the extension looks for a Limiter
            apikeys.init_app(app, db=db)
            limiter.init_app(app)
            with app.app_context():
                apikeys.create_all()
            app.test_client().get("/", headers={"X-API-Key": "pk_live_" + "z" * 46})
    warnings = [r.getMessage() for r in caplog.records if "twice" in r.getMessage()]
    assert len(warnings) == 1
    assert "RATELIMIT_HEADERS_ENABLED = False" in warnings[0]
    assert 'APIKEYS_RATELIMIT_HEADERS = "none"' in warnings[0]


def test_no_warning_when_only_one_library_writes_headers(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_apikeys"):
        example_app(database_url)
    assert not [r for r in caplog.records if "twice" in r.getMessage()]


@pytest.mark.parametrize(
    ("argument", "config", "writes"),
    [(True, False, True), (False, True, False), (None, True, True), (None, False, False)],
)
def test_header_detection_reads_flask_limiter_as_each_supported_version_sets_it(
    argument: bool | None, config: bool, writes: bool
) -> None:
    """``flask_limiter_writes_headers`` reads Flask-Limiter's private ``_headers_enabled``
    (there is no public accessor): this pins that reading on every version CI installs, the
    lowest allowed and today's."""
    app = Flask(__name__)
    app.config["RATELIMIT_HEADERS_ENABLED"] = config
    limiter = Limiter(key_func=lambda: "x", storage_uri="memory://", headers_enabled=argument)
    limiter.init_app(app)
    with app.app_context():
        assert flask_limiter_writes_headers(limiter) is writes
