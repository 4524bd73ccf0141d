"""Refusals rendered from documents built once: each response still says what its error says."""

from __future__ import annotations

import gc
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys, require_scopes
from flask_apikeys.errors import (
    APIKeyError,
    InsufficientScope,
    InvalidAPIKey,
    QuotaExceeded,
    RateLimitExceeded,
)
from flask_apikeys.keys import generate_key
from flask_apikeys.limiting import windows
from flask_apikeys.models import APIKeyUsage
from flask_apikeys.signals import quota_refused, rate_limit_refused


def rendered(error: APIKeyError) -> tuple[dict[str, Any], dict[str, str], int]:
    response = error.get_response()
    return json.loads(response.get_data()), dict(response.headers), response.status_code


def rate_error(seconds: int) -> RateLimitExceeded:
    return RateLimitExceeded(
        f"The key's rate limit of 1 requests per 60 s is reached; retry in {seconds} s.",
        retry_after=seconds,
        policy="apikey",
        limit=1,
        window_seconds=60,
    )


def test_a_repeated_refusal_gets_its_own_seconds_in_body_and_header() -> None:
    first, same, later = rendered(rate_error(5)), rendered(rate_error(5)), rendered(rate_error(4))
    assert first == same
    assert first[0]["detail"].endswith("retry in 5 s.") and first[1]["Retry-After"] == "5"
    assert later[0]["detail"].endswith("retry in 4 s.") and later[1]["Retry-After"] == "4"
    body, headers, status = first
    assert status == 429 and headers["Content-Type"] == "application/problem+json"
    assert headers["Content-Length"] == str(len(json.dumps(body)))
    assert (body["policy"], body["limit"], body["window_seconds"]) == ("apikey", 1, 60)


def test_errors_with_the_same_detail_keep_their_own_class_status_and_headers() -> None:
    detail = "The organization's monthly quota of 5 requests is used up."
    quota_soon = rendered(QuotaExceeded(detail, retry_after=10, limit=5, period="2026-12"))
    quota_later = rendered(QuotaExceeded(detail, retry_after=20, limit=5, period="2026-12"))
    assert quota_soon[0] == quota_later[0] and quota_soon[0]["code"] == "quota_exceeded"
    assert (quota_soon[1]["Retry-After"], quota_later[1]["Retry-After"]) == ("10", "20")
    invalid = rendered(InvalidAPIKey(detail))
    assert (invalid[0]["code"], invalid[2]) == ("invalid_api_key", 401)
    assert invalid[1]["WWW-Authenticate"].startswith('Bearer realm="api", error="invalid_token"')


def test_members_that_cannot_be_remembered_and_overridden_documents_still_render() -> None:
    app = Flask(__name__)
    with app.test_request_context(headers={"Authorization": "Bearer x"}):
        scope = rendered(InsufficientScope("Needs a:read.", required_scopes=["a:read"]))
    assert scope[0]["required_scopes"] == ["a:read"] and scope[2] == 403
    assert 'scope="a:read"' in scope[1]["WWW-Authenticate"]

    class Teapot(APIKeyError):
        code = 418
        error_code = "teapot"

        def problem(self) -> dict[str, Any]:
            return {"brewing": self.detail}

    assert rendered(Teapot("tea"))[0] == {"brewing": "tea"}
    assert rendered(Teapot("coffee"))[0] == {"brewing": "coffee"}


@pytest.fixture
def app_config() -> dict[str, Any]:
    # No flush and no key lookup while garbage is counted: only the requests' own objects.
    return {"APIKEYS_USAGE_FLUSH_INTERVAL": 3600, "APIKEYS_CACHE_TTL": 3600}


def cyclic_garbage_per_request(client: FlaskClient, key: str, requests: int = 20) -> float:
    """Objects only the garbage collector can free, per request (collections held off)."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(requests):
            client.get("/v1/whoami", headers={"X-API-Key": key})
        return gc.collect() / requests
    finally:
        gc.enable()


@pytest.mark.slow  # 3 s: counts the cyclic garbage of many requests (the full suite runs it)
def test_a_refusal_leaves_no_more_cyclic_garbage_than_a_served_request(
    app: Flask, apikeys: APIKeys
) -> None:
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        served = apikeys.create_key(organization, "served", scopes=["*"]).key
        limited = apikeys.create_key(organization, "limited", scopes=["*"], rate_limit="1/day")
    client = app.test_client()
    assert client.get("/v1/whoami", headers={"X-API-Key": limited.key}).status_code == 200
    assert client.get("/v1/whoami", headers={"X-API-Key": served}).status_code == 200
    assert client.get("/v1/whoami", headers={"X-API-Key": limited.key}).status_code == 429
    baseline = cyclic_garbage_per_request(client, served)
    # The error's traceback held the frames that held the environ that held the error.
    assert cyclic_garbage_per_request(client, limited.key) <= baseline
    assert cyclic_garbage_per_request(client, generate_key("pk", "live")) <= baseline


# -- the hook answers a limit's 429 without raising it -------------------------------------------

FROZEN_NOW = 1_800_000_030.5  # mid-month, mid-minute: the same seconds to wait for every request


def hidden_scopes(view: Callable[..., Any]) -> Callable[..., Any]:
    """A wrapper without functools.wraps: the hook cannot see the scopes, the decorator acts."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return call


def limited_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    """``/hooked`` limited by the hook, ``/decorated`` by its ``@require_scopes`` (the hook
    leaves its public path alone), one usage row per request written at once."""
    app = make_app(
        APIKEYS_PUBLIC_PATHS=["/decorated"],
        APIKEYS_RATELIMIT_HEADERS="all",
        APIKEYS_USAGE_MODE="sync",
        **config,
    )

    def view() -> dict[str, str]:
        return {"ok": "yes"}

    scoped = require_scopes("reports:read")(view)
    app.add_url_rule("/hooked", "hooked", scoped)
    app.add_url_rule("/decorated", "decorated", hidden_scopes(scoped))
    return app


LIMITS = {
    "rate limit": ({}, {"rate_limit": "1/day"}, "rate_limit_exceeded", rate_limit_refused),
    "quota": ({"monthly_request_limit": 1}, {}, "quota_exceeded", quota_refused),
}


@pytest.mark.parametrize("which", LIMITS)
def test_the_hooks_429_is_byte_for_byte_the_decorators(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    organization_options, key_options, code, signal = LIMITS[which]
    monkeypatch.setattr(windows, "now", lambda: FROZEN_NOW)
    app = limited_app(make_app)
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(
            name="Acme", email="a@acme.io", plan="pro", **organization_options
        )
        key = apikeys.create_key(organization, "k", scopes=["reports:read"], **key_options).key
    client = app.test_client()
    headers = {"X-API-Key": key, "User-Agent": "same/1.0"}
    assert client.get("/hooked", headers=headers).status_code == 200
    refusals: list[APIKeyError] = []
    with signal.connected_to(lambda sender, error: refusals.append(error), app):
        by_hook = client.get("/hooked", headers=headers)
        by_decorator = client.get("/decorated", headers=headers)
    assert by_hook.status_code == by_decorator.status_code == 429
    assert by_hook.get_data() == by_decorator.get_data()
    assert by_hook.headers.to_wsgi_list() == by_decorator.headers.to_wsgi_list()
    names = {name for name, _ in by_hook.headers.to_wsgi_list()}
    assert {"Retry-After", "X-RateLimit-Remaining", "RateLimit", "RateLimit-Policy"} <= names
    assert json.loads(by_hook.get_data())["code"] == code
    assert [error.error_code for error in refusals] == [code, code]
    with app.app_context():
        rows = (
            app.extensions["sqlalchemy"]
            .session.scalars(sa.select(APIKeyUsage).order_by(APIKeyUsage.id))
            .all()
        )
    hooked_row, decorated_row = [
        (row.status_code, row.error_code, row.error_message, row.api_key_id) for row in rows[1:]
    ]
    assert hooked_row == decorated_row and hooked_row[:2] == (429, code)
    assert len(rows) == 3


def test_the_hook_raises_no_exception_for_a_429(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows, "now", lambda: FROZEN_NOW)
    app = limited_app(make_app)
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(organization, "k", scopes=["*"], rate_limit="1/day").key
    client = app.test_client()
    assert client.get("/hooked", headers={"X-API-Key": key}).status_code == 200
    raised = exceptions_raised_during(lambda: client.get("/hooked", headers={"X-API-Key": key}))
    assert raised[0] == 429
    assert not [name for name in raised[1] if name in {"RateLimitExceeded", "QuotaExceeded"}]
    # The decorator still raises it (and Flask's handler answers it).
    raised = exceptions_raised_during(lambda: client.get("/decorated", headers={"X-API-Key": key}))
    assert raised[0] == 429 and "RateLimitExceeded" in raised[1]


def exceptions_raised_during(send: Callable[[], Any]) -> tuple[int, list[str]]:
    """The status ``send`` got, and the class of every exception raised meanwhile."""
    raised: list[str] = []

    def trace(frame: Any, event: str, argument: Any) -> Any:
        if event == "exception":
            raised.append(argument[0].__name__)
        return trace

    sys.settrace(trace)
    try:
        status = send().status_code
    finally:
        sys.settrace(None)
    return status, raised


def test_a_refusal_is_built_once_per_second_to_wait_and_raised_as_the_requests_own(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [FROZEN_NOW]
    monkeypatch.setattr(windows, "now", lambda: clock[0])
    app = limited_app(make_app)
    handled: list[APIKeyError] = []

    @app.errorhandler(RateLimitExceeded)
    def own_handler(error: RateLimitExceeded) -> tuple[dict[str, str], int]:
        handled.append(error)
        return {"error": "slow down"}, 429

    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(organization, "k", scopes=["*"], rate_limit="1/day").key
    client = app.test_client()
    headers = {"X-API-Key": key}
    assert client.get("/hooked", headers=headers).status_code == 200
    signalled: list[APIKeyError] = []
    with rate_limit_refused.connected_to(lambda sender, error: signalled.append(error), app):
        for path in ["/hooked", "/hooked", "/decorated", "/decorated"]:
            refused = client.get(path, headers=headers)
            assert refused.status_code == 429 and refused.json == {"error": "slow down"}
            assert refused.headers["Retry-After"] == str(signalled[-1].retry_after)
        clock[0] += 1
        assert client.get("/hooked", headers=headers).status_code == 429
    # The same seconds to wait: one error signalled; a second later, another one.
    assert all(error is signalled[0] for error in signalled[:4])
    assert signalled[4] is not signalled[0]
    assert signalled[4].retry_after == signalled[0].retry_after - 1
    assert f"retry in {signalled[4].retry_after} s." in signalled[4].detail
    # Each raised one is the request's own (its traceback is), with the same content.
    assert len({id(error) for error in handled}) == len(handled) == 5
    assert all(error is not signalled[0] for error in handled)
    assert [error.detail for error in handled[:4]] == [signalled[0].detail] * 4
    depths = [len(traceback.extract_tb(error.__traceback__)) for error in handled[:4]]
    assert depths[0] == depths[1] and depths[2] == depths[3]
