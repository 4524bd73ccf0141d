"""No self-inflicted refusals, no unbounded memory: a token issued is a token accepted, and the
caches of key snapshots are bounded by memory, not only by entries (issue 17, item 8)."""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask

from flask_apikeys import APIKeys, tokens
from flask_apikeys.cache import VerifiedKeyCache, approximate_size

SECRET = "a-jwt-secret-of-at-least-32-characters!"
TOKEN_PATH = "/auth/token"


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_JWT_ENABLED": True, "APIKEYS_JWT_SECRET": SECRET}


def many_scopes(count: int) -> list[str]:
    """``count`` scopes of a realistic length, ``presentations:read`` among them."""
    return ["presentations:read"] + [
        f"resource_{number:04d}_with_a_longer_name:read" for number in range(count - 1)
    ]


def new_key(app: Flask, apikeys: APIKeys, scopes: list[str]) -> str:
    with app.app_context():
        organization = apikeys.create_organization(
            name=f"Org {len(scopes)}", email="o@o.io", plan="enterprise"
        )
        return apikeys.create_key(organization, "many scopes", scopes=scopes).key


@pytest.mark.parametrize("count", [10, 100, 200, 400])
def test_every_token_issued_is_accepted_or_none_is_issued(
    app: Flask, apikeys: APIKeys, count: int
) -> None:
    key = new_key(app, apikeys, many_scopes(count))
    client = app.test_client()
    response = client.post(TOKEN_PATH, headers={"X-API-Key": key})
    if response.status_code == 200:
        token = response.get_json()["access_token"]
        used = client.get("/v1/presentations", headers={"Authorization": f"Bearer {token}"})
        assert used.status_code == 200, used.get_json()
    else:
        # Refused at issue time, clearly, and the way out named: ask for fewer scopes.
        assert response.status_code == 422
        assert response.mimetype == "application/problem+json"
        assert "scope" in response.get_json()["errors"]
        assert count >= 200
    narrow = client.post(
        TOKEN_PATH, json={"scope": "presentations:read"}, headers={"X-API-Key": key}
    )
    assert narrow.status_code == 200
    token = narrow.get_json()["access_token"]
    used = client.get("/v1/presentations", headers={"Authorization": f"Bearer {token}"})
    assert used.status_code == 200


def test_issued_tokens_stay_under_what_a_request_header_can_carry(
    app: Flask, apikeys: APIKeys
) -> None:
    key = new_key(app, apikeys, many_scopes(200))
    client = app.test_client()
    for count in range(20, 201, 20):
        scope = " ".join(many_scopes(count))
        response = client.post(TOKEN_PATH, json={"scope": scope}, headers={"X-API-Key": key})
        if response.status_code == 200:
            assert len(response.get_json()["access_token"]) <= tokens.MAX_ISSUED_TOKEN_LENGTH
        else:
            assert response.status_code == 422


def retained_bytes(work: Any) -> int:
    """How much memory ``work()`` leaves allocated (traced by Python)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = work()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


@pytest.mark.slow  # 600 tokens verified under tracemalloc: tens of seconds
def test_narrowed_token_snapshots_are_bounded_by_memory(
    app: Flask, apikeys: APIKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 2 * 1024 * 1024
    scopes = many_scopes(150)
    key = new_key(app, apikeys, scopes)
    authority = app.extensions["apikeys"].tokens
    monkeypatch.setattr(authority._narrowed, "max_bytes", budget)
    with app.app_context():
        verified = apikeys.verify_key(key)
        # 600 tokens for 600 different subsets of the key's scopes (two left out of each).
        subsets = itertools.islice(itertools.combinations(range(1, 150), 2), 600)
        issued = [
            authority.issue(
                verified,
                " ".join(name for index, name in enumerate(scopes) if index not in left_out),
            )["access_token"]
            for left_out in subsets
        ]

        def verify_all() -> None:
            for token in issued:
                authority.verify(token, {})

        retained = retained_bytes(verify_all)
    # Unbounded, 600 narrowed snapshots of ~150 scopes keep well over 5 MB alive.
    assert retained < budget * 1.5, retained
    assert authority._narrowed.size <= budget


@pytest.mark.slow  # 500 snapshots of 200 scopes under tracemalloc: seconds
def test_the_key_cache_is_bounded_by_memory(app: Flask, apikeys: APIKeys) -> None:
    scopes = many_scopes(200)
    key = new_key(app, apikeys, scopes)
    with app.app_context():
        verified = apikeys.verify_key(key)
    budget = 1024 * 1024
    cache = VerifiedKeyCache(ttl_seconds=60, max_entries=10_000, max_bytes=budget)

    def fill() -> VerifiedKeyCache:
        for number in range(500):
            own = frozenset(f"{name}.{number}" for name in scopes)  # a distinct key each
            snapshot = replace(verified, scopes=own, own_scopes=own)
            cache.put(number.to_bytes(8, "big"), snapshot)
        return cache

    retained = retained_bytes(fill)
    assert cache.size <= budget
    assert retained < budget * 1.5, retained
    assert approximate_size(verified) > 200 * 40  # the scopes are counted, not just the entry
