"""Limits built once per key configuration and shared by its keys (cold keys build little)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st

from flask_apikeys import APIKeys
from flask_apikeys.limiting.counters import Counter
from flask_apikeys.limiting.policies import KeyLimits, Month, build_limits
from flask_apikeys.limiting.templates import KEY_PLACEHOLDER, LimitsTemplate

MONTH = Month.containing(1_767_225_600.0)  # 2026-01-01 00:00 UTC
windows = st.sampled_from([1, 60, 3600, 86_400])
limits_of_a_key = st.lists(
    st.tuples(st.integers(1, 10**9), windows), min_size=1, max_size=3, unique_by=lambda p: p[1]
)


def policies_for(
    key_id: str, organization: list[tuple[int, int]], own: list[tuple[int, int]]
) -> list[tuple[str, str, int, int]]:
    """Entries as ``RateLimits`` makes them: the organization's, then the key's own."""
    tag = "{org}"
    entries = [("organization", f"apikeys:{tag}:org:{w}", a, w) for a, w in organization]
    for amount, window in own:
        name = "apikey" if len(own) == 1 else f"apikey-{window}s"
        entries.append((name, f"apikeys:{tag}:key:{key_id}:{window}", amount, window))
    return entries


@given(
    organization=st.lists(st.tuples(st.integers(1, 10**6), windows), max_size=2),
    own=limits_of_a_key,
    quota=st.none() | st.integers(1, 10**9),
    sliding=st.booleans(),
    key_id=st.uuids(),
)
def test_a_template_filled_with_a_key_is_what_building_for_that_key_gives(
    organization: list[tuple[int, int]],
    own: list[tuple[int, int]],
    quota: int | None,
    sliding: bool,
    key_id: uuid.UUID,
) -> None:
    quota_entry = None if quota is None else ("quota:{org}:2026-01", quota)
    template = LimitsTemplate.of(
        build_limits(
            policies_for(KEY_PLACEHOLDER, organization, own), quota_entry, MONTH, sliding=sliding
        )
    )
    expected = build_limits(
        policies_for(str(key_id), organization, own), quota_entry, MONTH, sliding=sliding
    )
    filled = template.for_key(str(key_id))
    assert filled == expected
    # Built by slot stores (cheaper than the constructors), yet the very classes: frozen, hashed.
    assert type(filled) is KeyLimits and all(type(c) is Counter for c in filled.counters)
    assert hash(filled) == hash(expected)
    assert hash(filled.counters[-1]) == hash(expected.counters[-1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        filled.counters = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        filled.counters[-1].key = "other"  # type: ignore[misc]


def test_a_template_refuses_shared_counters_after_the_keys_own() -> None:
    limits = build_limits(
        [
            ("apikey", f"apikeys:{{o}}:key:{KEY_PLACEHOLDER}:60", 5, 60),
            ("organization", "apikeys:{o}:org:60", 50, 60),
        ],
        None,
        MONTH,
    )
    with pytest.raises(ValueError, match="after the shared ones"):
        LimitsTemplate.of(limits)


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_DEFAULT_RATE_LIMIT": "3/minute", "APIKEYS_RATELIMIT_HEADERS": "all"}


@pytest.fixture
def organization(app: Flask, apikeys: APIKeys) -> Any:
    with app.app_context():
        return apikeys.create_organization(
            name="Tenant", email="ops@example.com", rate_limit_per_minute=100, max_api_keys=10
        ).id


def test_keys_of_one_configuration_share_its_limits_and_count_apart(
    app: Flask, apikeys: APIKeys, client: FlaskClient, organization: Any
) -> None:
    with app.app_context():
        created = [apikeys.create_key(organization, f"k{n}", scopes=["*"]) for n in range(3)]
        custom = apikeys.create_key(organization, "custom", scopes=["*"], rate_limit="2/minute")
    limits = app.extensions["apikeys"].limits
    with app.app_context():
        snapshots = [apikeys.verify_key(key.key) for key in created]
        counters = [limits.counters_of(snapshot) for snapshot in snapshots]
        custom_counters = limits.counters_of(apikeys.verify_key(custom.key))
    # One configuration: the same organization counter, each key its own counter by its id.
    assert len({id(taken["organization"]) for taken in counters}) == 1
    own = [taken["apikey"] for taken in counters]
    assert all(str(key.id) in counter.key for key, counter in zip(snapshots, own, strict=True))
    assert len({counter.key for counter in own}) == 3
    assert {counter.limit for counter in own} == {100}
    assert custom_counters["apikey"].limit == 2
    assert custom_counters["organization"] == counters[0]["organization"]

    def statuses(key: str, count: int) -> list[int]:
        return [
            client.get("/v1/whoami", headers={"X-API-Key": key}).status_code for _ in range(count)
        ]

    assert statuses(custom.key, 3) == [200, 200, 429]
    # The other keys of the organization count apart, and all of them in the organization's.
    responses = [client.get("/v1/whoami", headers={"X-API-Key": key.key}) for key in created]
    assert [response.status_code for response in responses] == [200] * 3
    policies = {response.headers["RateLimit-Policy"] for response in responses}
    assert len(policies) == 1 and '"organization";q=100;w=60, "apikey";q=100;w=60' in policies.pop()
    assert [counter.limit - limits.counters.peek(counter)[0] for counter in own] == [99] * 3
    remaining = [response.headers["X-RateLimit-Remaining"] for response in responses]
    assert remaining == ["97", "96", "95"]  # the organization's: the custom key took 2


def test_the_first_request_of_a_key_reuses_its_configurations_header_texts(
    app: Flask, apikeys: APIKeys, client: FlaskClient, organization: Any
) -> None:
    """Built once per configuration, not per key: the second key's limits are not parsed
    or formatted again (the texts are the same objects)."""
    with app.app_context():
        first, second = (apikeys.create_key(organization, n, scopes=["*"]) for n in "ab")
    limits = app.extensions["apikeys"].limits
    month = Month.containing(time.time())
    resolved = []
    for created in (first, second):
        with app.app_context():
            resolved.append(limits._resolve(apikeys.verify_key(created.key), month))
    assert resolved[0].policy_header is resolved[1].policy_header
    assert resolved[0].amount_texts is resolved[1].amount_texts
    assert resolved[0].counters[-1] != resolved[1].counters[-1]
