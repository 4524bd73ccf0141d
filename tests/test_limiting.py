"""Rate limits per key and organization, monthly quotas, failed attempts, headers (memory)."""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_apikeys import APIKeys
from flask_apikeys.config import ConfigError
from flask_apikeys.limiting.counters import Counter
from flask_apikeys.limiting.policies import Month, parse_limit

from .factory import create_app
from .helpers import assert_problem

WHOAMI = "/v1/whoami"


def get(client: FlaskClient, key: str | None, address: str = "127.0.0.1") -> Any:
    headers = {"X-API-Key": key} if key else {}
    return client.get(WHOAMI, headers=headers, environ_base={"REMOTE_ADDR": address})


def statuses(client: FlaskClient, key: str, count: int) -> list[int]:
    return [get(client, key).status_code for _ in range(count)]


def parse_ratelimit_field(value: str) -> dict[str, dict[str, int]]:
    """``"a";r=1;t=2, "b";r=3;t=4`` → ``{"a": {"r": 1, "t": 2}, "b": {...}}``."""
    members = {}
    for member in value.split(","):
        name, *parameters = member.strip().split(";")
        members[name.strip('"')] = {
            key: int(number) for key, number in (p.split("=") for p in parameters)
        }
    return members


def limited_app(database_url: str, **config: Any) -> tuple[Flask, Any, APIKeys]:
    """:func:`create_app` with both header families on (most tests here read the IETF ones)."""
    return create_app(database_url, **{"APIKEYS_RATELIMIT_HEADERS": "all", **config})


@pytest.fixture
def app_config() -> dict[str, Any]:
    plans = {
        "free": {"requests_per_minute": 10, "monthly_requests": 1000, "max_keys": 20},
        "pro": {"requests_per_minute": 60, "monthly_requests": 100_000, "max_keys": 20},
        "enterprise": {"requests_per_minute": 300, "monthly_requests": None, "max_keys": 50},
        "unlimited": {"requests_per_minute": None, "monthly_requests": None, "max_keys": None},
    }
    return {
        "APIKEYS_DEFAULT_RATE_LIMIT": "7/minute",
        "APIKEYS_PLANS": plans,
        "APIKEYS_RATELIMIT_HEADERS": "all",
    }


@pytest.fixture
def org_with(app: Flask, apikeys: APIKeys) -> Callable[..., Any]:
    """Create an organization with the given plan and overrides; return its id."""

    def create(plan: str = "pro", **overrides: Any) -> Any:
        with app.app_context():
            return apikeys.create_organization(
                name=f"Org {plan}", email="ops@example.com", plan=plan, **overrides
            ).id

    return create


def test_key_past_its_limit_gets_429_problem_with_retry_after(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key(rate_limit="3/minute")
    assert statuses(client, key, 3) == [200, 200, 200]
    response = get(client, key)
    body = assert_problem(response, 429, "rate_limit_exceeded")
    # Sliding: 3 in this minute weigh 3 × (1 − x/60) in the next, room for one at x = 20 s.
    assert 21 <= int(response.headers["Retry-After"]) <= 80
    assert body["policy"] == "apikey" and body["limit"] == 3 and body["window_seconds"] == 60
    assert key not in response.get_data(as_text=True)


def test_every_authenticated_response_carries_both_header_families(
    client: FlaskClient, make_key: Callable[..., str]
) -> None:
    key = make_key(rate_limit="5/minute")
    before = time.time()
    response = get(client, key)
    assert response.status_code == 200
    headers = response.headers
    assert headers["X-RateLimit-Limit"] == "5"
    assert headers["X-RateLimit-Remaining"] == "4"
    # A sliding window (the default) is aligned on the minute: it resets at the minute's end.
    ends = {60 * int(moment // 60) + 60 + 1 for moment in (before, time.time())}
    assert int(headers["X-RateLimit-Reset"]) in ends
    policy = parse_ratelimit_field(headers["RateLimit-Policy"])
    assert policy["apikey"] == {"q": 5, "w": 60}
    assert policy["organization"] == {"q": 60, "w": 60}  # plan pro
    assert policy["quota"]["q"] == 100_000
    current = parse_ratelimit_field(headers["RateLimit"])
    assert current["apikey"]["r"] == 4 and 0 < current["apikey"]["t"] <= 60
    assert current["organization"]["r"] == 59
    assert current["quota"]["r"] == 99_999
    refused = [get(client, key) for _ in range(5)][-1]
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert parse_ratelimit_field(refused.headers["RateLimit"])["apikey"]["r"] == 0


def test_public_and_unauthenticated_responses_carry_no_limit_headers(
    client: FlaskClient,
) -> None:
    assert "X-RateLimit-Limit" not in client.get("/health").headers
    missing = get(client, None)
    assert missing.status_code == 401 and "RateLimit" not in missing.headers


@pytest.mark.parametrize(
    ("plan", "org_rate", "key_rate", "expected"),
    [
        ("free", None, "2/minute", 2),  # the key's own limit first
        ("free", 4, None, 4),  # then the organization's override
        ("free", None, None, 10),  # then its plan
        ("unlimited", None, None, 7),  # then APIKEYS_DEFAULT_RATE_LIMIT
    ],
    ids=["key", "organization", "plan", "default"],
)
def test_limit_comes_from_key_then_organization_then_plan_then_default(
    app: Flask,
    apikeys: APIKeys,
    client: FlaskClient,
    org_with: Callable[..., Any],
    plan: str,
    org_rate: int | None,
    key_rate: str | None,
    expected: int,
) -> None:
    org = org_with(plan, rate_limit_per_minute=org_rate)
    with app.app_context():
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit=key_rate).key
    assert statuses(client, key, expected + 1) == [200] * expected + [429]


def test_changing_limits_applies_on_the_next_request_without_restart(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_with: Callable[..., Any]
) -> None:
    org = org_with("pro")
    with app.app_context():
        created = apikeys.create_key(org, "k", scopes=["*"])
    key = created.key
    assert statuses(client, key, 3) == [200] * 3
    with app.app_context():
        apikeys.update_organization(org, rate_limit_per_minute=3)
    assert get(client, key).status_code == 429  # the count so far stands against the new limit
    with app.app_context():
        apikeys.update_key(created.api_key.id, rate_limit="5/minute")
        apikeys.update_organization(org, rate_limit_per_minute=None, plan="enterprise")
    assert statuses(client, key, 3) == [200, 200, 429]
    with app.app_context():
        apikeys.update_key(created.api_key.id, rate_limit=None)  # back to the plan: 300
    assert get(client, key).headers["X-RateLimit-Limit"] == "300"


def test_organization_limit_is_shared_by_all_its_keys(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_with: Callable[..., Any]
) -> None:
    org = org_with("free", rate_limit_per_minute=4)
    with app.app_context():
        keys = [apikeys.create_key(org, f"k{n}", scopes=["*"]).key for n in range(10)]
    results = [get(client, key).status_code for key in keys]
    assert results == [200] * 4 + [429] * 6
    body = assert_problem(get(client, keys[9]), 429, "rate_limit_exceeded")
    assert body["policy"] == "organization"
    other = org_with("free", rate_limit_per_minute=4)
    with app.app_context():
        other_key = apikeys.create_key(other, "other", scopes=["*"]).key
    assert get(client, other_key).status_code == 200  # another organization is not affected


def test_organization_wide_limit_can_be_turned_off(database_url: str) -> None:
    app, _, apikeys = limited_app(database_url, APIKEYS_RATELIMIT_ORGANIZATION_WIDE=False)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="A", email="a@a.io", plan="free")
        keys = [apikeys.create_key(org, f"k{n}", scopes=["*"]).key for n in range(2)]
    client = app.test_client()
    assert [get(client, key).status_code for key in keys * 10] == [200] * 20
    assert "organization" not in get(client, keys[0]).headers["RateLimit-Policy"]


def test_a_request_refused_by_one_limit_consumes_none_of_the_others(
    app: Flask, apikeys: APIKeys, client: FlaskClient, org_with: Callable[..., Any]
) -> None:
    org = org_with("free", rate_limit_per_minute=5, monthly_request_limit=1000)
    with app.app_context():
        small = apikeys.create_key(org, "small", scopes=["*"], rate_limit="2/minute").key
        big = apikeys.create_key(org, "big", scopes=["*"])
    # The key's own limit refuses: neither the organization's limit nor the quota is consumed.
    assert statuses(client, small, 6) == [200, 200] + [429] * 4
    current = parse_ratelimit_field(get(client, big.key).headers["RateLimit"])
    assert current["organization"]["r"] == 2 and current["quota"]["r"] == 997
    # Now the organization's limit refuses: the big key's own counter and the quota stay put.
    assert statuses(client, big.key, 5) == [200, 200] + [429] * 3
    limits = app.extensions["apikeys"].limits
    with app.app_context():
        taken_by_big = limits.counters_of(apikeys.verify_key(big.key))
    assert limits.counters.peek(taken_by_big["quota"])[0] == 5
    assert limits.counters.peek(taken_by_big["apikey"])[0] == 3


def test_monthly_quota_refuses_with_quota_exceeded_until_next_month(
    client: FlaskClient, org_with: Callable[..., Any], app: Flask, apikeys: APIKeys
) -> None:
    org = org_with("pro", monthly_request_limit=3)
    with app.app_context():
        key = apikeys.create_key(org, "k", scopes=["*"]).key
    assert statuses(client, key, 3) == [200] * 3
    response = get(client, key)
    body = assert_problem(response, 429, "quota_exceeded")
    now = time.time()
    moment = time.gmtime(now)
    year, month = (
        (moment.tm_year + 1, 1) if moment.tm_mon == 12 else (moment.tm_year, moment.tm_mon + 1)
    )
    next_month = calendar.timegm((year, month, 1, 0, 0, 0))
    assert abs(int(response.headers["Retry-After"]) - math.ceil(next_month - now)) <= 2
    assert body["period"] == time.strftime("%Y-%m", moment)
    assert body["limit"] == 3


@pytest.mark.parametrize(
    ("moment", "label", "start", "end"),
    [
        ("2025-12-31T23:59:59", "2025-12", "2025-12-01T00:00:00", "2026-01-01T00:00:00"),
        ("2026-01-01T00:00:00", "2026-01", "2026-01-01T00:00:00", "2026-02-01T00:00:00"),
        ("2028-02-29T12:00:00", "2028-02", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
    ],
)
def test_quota_months_are_calendar_months_in_utc(
    moment: str, label: str, start: str, end: str
) -> None:
    def utc(text: str) -> float:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))

    month = Month.containing(utc(moment))
    assert (month.label, month.start, month.end) == (label, utc(start), utc(end))


def test_quota_counter_is_keyed_by_organization_and_month(
    app: Flask, client: FlaskClient, org_with: Callable[..., Any], apikeys: APIKeys
) -> None:
    org = org_with("pro")
    with app.app_context():
        key = apikeys.create_key(org, "k", scopes=["*"]).key
    statuses(client, key, 2)
    label = Month.containing(time.time()).label
    counter = Counter(f"quota:{{{org}}}:{label}", 100_000, 1)
    assert app.extensions["apikeys"].limits.counters.peek(counter)[0] == 2


@pytest.mark.parametrize("text", ["10/second;1000/day", "5 per minute", "3/minute;9/minute"])
def test_limit_strings_are_parsed_once_into_amount_and_window(text: str) -> None:
    parsed = parse_limit(text)
    assert parsed is parse_limit(text)
    assert (
        parsed
        == {
            "10/second;1000/day": ((10, 1), (1000, 86_400)),
            "5 per minute": ((5, 60),),
            "3/minute;9/minute": ((3, 60),),
        }[text]
    )


class TestFailedAuthentication:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"APIKEYS_FAILED_AUTH_LIMIT": "3/minute", "APIKEYS_RATELIMIT_HEADERS": "all"}

    def test_failed_attempts_are_limited_per_client_address(
        self, client: FlaskClient, make_key: Callable[..., str]
    ) -> None:
        valid = make_key()
        wrong = valid[:-8] + ("A" if valid[-8] != "A" else "B") + valid[-7:]
        for _ in range(3):
            assert_problem(get(client, wrong, "203.0.113.9"), 401, "invalid_api_key")
        body = assert_problem(get(client, wrong, "203.0.113.9"), 429, "rate_limit_exceeded")
        assert body["policy"] == "failed-authentication"
        # Refused before the key is even looked at, so a right guess gains nothing now...
        refused = get(client, valid, "203.0.113.9")
        assert_problem(refused, 429, "rate_limit_exceeded")
        assert 21 <= int(refused.headers["Retry-After"]) <= 80  # as for a key's 3/minute
        # ...while other addresses are not affected.
        assert get(client, valid, "198.51.100.7").status_code == 200
        assert get(client, wrong, "198.51.100.7").status_code == 401

    def test_requests_without_a_key_are_not_failed_attempts(self, client: FlaskClient) -> None:
        for _ in range(10):
            assert_problem(get(client, None), 401, "missing_api_key")


def test_failed_attempt_limit_can_be_turned_off(database_url: str) -> None:
    app, _, apikeys = limited_app(database_url, APIKEYS_FAILED_AUTH_LIMIT="")
    with app.app_context():
        apikeys.create_all()
    client = app.test_client()
    for _ in range(25):
        assert get(client, "pk_live_" + "x" * 46).status_code == 401


def test_requests_without_a_key_are_limited_per_address_when_allowed(database_url: str) -> None:
    app, _, apikeys = limited_app(
        database_url, APIKEYS_ALLOW_UNAUTHENTICATED=True, APIKEYS_DEFAULT_RATE_LIMIT="2/minute"
    )
    with app.app_context():
        apikeys.create_all()
    client = app.test_client()
    assert [get(client, None, "192.0.2.1").status_code for _ in range(3)] == [200, 200, 429]
    assert get(client, None, "192.0.2.2").status_code == 200
    before = time.time()
    field = parse_ratelimit_field(get(client, None, "192.0.2.2").headers["RateLimit"])
    # Two in this minute: the sliding estimate has room for one more once the next minute is
    # half over (2 × (1 − 30/60) + 0 = 1).
    next_unit_in = {
        math.ceil(60 * (moment // 60) + 90 - moment) for moment in (before, time.time())
    }
    assert field["address"]["r"] == 0
    assert min(next_unit_in) - 1 <= field["address"]["t"] <= max(next_unit_in)


@pytest.mark.parametrize(
    ("option", "header_present", "limited"),
    [("APIKEYS_RATELIMIT_HEADERS", False, True), ("APIKEYS_RATELIMIT_ENABLED", False, False)],
)
def test_headers_and_limiting_can_be_turned_off(
    database_url: str, option: str, header_present: bool, limited: bool
) -> None:
    app, _, apikeys = limited_app(database_url, **{option: False})
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="A", email="a@a.io", plan="free")
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit="1/minute").key
    client = app.test_client()
    assert get(client, key).status_code == 200
    assert ("X-RateLimit-Limit" in get(client, key).headers) is header_present
    assert (get(client, key).status_code == 429) is limited


def test_two_apps_in_one_process_keep_their_own_counters(tmp_path: Any) -> None:
    clients = []
    for name in ("one", "two"):
        app, _, apikeys = create_app(f"sqlite:///{tmp_path / name}.sqlite")
        with app.app_context():
            apikeys.create_all()
            org = apikeys.create_organization(name="A", email="a@a.io")
            key = apikeys.create_key(org, "k", scopes=["*"], rate_limit="2/minute").key
        clients.append((app.test_client(), key))
    assert statuses(*clients[0], 3) == [200, 200, 429]
    assert statuses(*clients[1], 2) == [200, 200]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("APIKEYS_FAILED_AUTH_LIMIT", "twenty a minute"),
        ("APIKEYS_RATELIMIT_FAIL_OPEN", "maybe"),
        ("APIKEYS_DEFAULT_RATE_LIMIT", "often"),
    ],
)
def test_bad_limit_settings_stop_init_app(database_url: str, option: str, value: str) -> None:
    with pytest.raises(ConfigError, match=option):
        limited_app(database_url, **{option: value})


@pytest.mark.parametrize(
    ("setting", "families"),
    [
        (None, {"X-RateLimit-Limit"}),
        ("x-ratelimit", {"X-RateLimit-Limit"}),
        (True, {"X-RateLimit-Limit"}),
        ("all", {"X-RateLimit-Limit", "RateLimit", "RateLimit-Policy"}),
        ("none", set()),
    ],
)
def test_header_families_by_setting(database_url: str, setting: Any, families: set[str]) -> None:
    """By default only X-RateLimit-*: the IETF draft's fields are opt-in (``all``)."""
    config = {} if setting is None else {"APIKEYS_RATELIMIT_HEADERS": setting}
    app, _, apikeys = create_app(database_url, **config)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="A", email="a@a.io", plan="pro")
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit="5/minute").key
    response = get(app.test_client(), key)
    assert response.status_code == 200
    present = {
        name
        for name in ("X-RateLimit-Limit", "RateLimit", "RateLimit-Policy")
        if name in response.headers
    }
    assert present == families
    if families:
        assert response.headers["X-RateLimit-Remaining"] == "4"
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
