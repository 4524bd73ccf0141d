"""What a snapshot is counted as in the caches of snapshots (cache.approximate_size).

A cache miss sizes its new snapshot for the key cache, and the rate limiter sizes the very same
snapshot for its per-snapshot cache right after: the size is computed once and remembered for
the snapshot sized last (one entry), never given to another snapshot.
"""

from __future__ import annotations

import dataclasses
import gc
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_apikeys import cache
from flask_apikeys.identity import OrganizationInfo, VerifiedKey

ORGANIZATION = OrganizationInfo(uuid.uuid4(), "Acme", "acme", "pro", True, 60, 1000)


def snapshot(scopes: frozenset[str], **fields: Any) -> VerifiedKey:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "organization": ORGANIZATION,
        "name": "one",
        "environment": "live",
        "prefix": "pk_live_AbCd",
        "hint": "wxyz",
        "scopes": scopes,
        "metadata": {},
        "custom_rate_limit": None,
        "expires_at": None,
        "revoked_at": None,
        "is_active": True,
        "expires_at_timestamp": None,
        "own_scopes": scopes,
    }
    return VerifiedKey(**{**values, **fields})


@pytest.fixture
def sized_scopes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The scope sets measured, in order: one per snapshot whose size is computed (each
    snapshot below has its own scopes as its effective ones), not remembered."""
    measured: list[Any] = []
    measure = cache.strings_size

    def counting(strings: Any) -> int:
        measured.append(strings)
        return measure(strings)

    monkeypatch.setattr(cache, "strings_size", counting)
    monkeypatch.setattr(cache, "_last_sized", (None, 0), raising=False)
    return measured


def computed(measured: list[Any], key: VerifiedKey) -> int:
    """How many times ``key``'s size was computed (its scope set measured)."""
    return sum(strings is key.scopes for strings in measured)


def test_a_snapshot_sized_twice_in_a_row_is_computed_once(sized_scopes: list[Any]) -> None:
    key = snapshot(frozenset(f"scope.{number}" for number in range(50)))
    first = cache.approximate_size(key)
    assert cache.approximate_size(key) == first > 50 * 40
    assert computed(sized_scopes, key) == 1


def test_another_snapshot_never_gets_the_remembered_size(sized_scopes: list[Any]) -> None:
    small = snapshot(frozenset({"read"}))
    large = snapshot(frozenset(f"scope.{number}" for number in range(200)))
    # Equal fields but another object (dataclasses.replace): sized on its own.
    copied = dataclasses.replace(small)
    sizes = [cache.approximate_size(key) for key in (small, large, small, copied, large)]
    assert sizes[0] == sizes[2] == sizes[3] < sizes[1] == sizes[4]
    assert sized_scopes == [key.scopes for key in (small, large, small, copied, large)]


def test_the_remembered_snapshot_is_the_only_one_kept_alive() -> None:
    keys = [snapshot(frozenset({f"scope.{number}"})) for number in range(3)]
    referenced = [weakref.ref(key.scopes) for key in keys]
    for key in keys:
        cache.approximate_size(key)
    del keys, key
    gc.collect()
    assert [reference() is not None for reference in referenced] == [False, False, True]


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_AUDIT": False, "APIKEYS_USAGE_TRACKING": False}


def test_a_cache_miss_sizes_its_snapshot_once_for_both_caches(
    app: Flask, make_key: Callable[..., str], sized_scopes: list[Any]
) -> None:
    """The key cache and the rate limiter's per-snapshot cache both count it, at one sizing."""
    client = app.test_client()
    state = app.extensions["apikeys"]
    for number in range(3):  # three cold keys: each misses the cache once
        key = make_key(scopes=["presentations:read"])
        response = client.get("/v1/presentations", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        assert "X-RateLimit-Limit" in response.headers
        with app.test_request_context():
            verified = app.extensions["apikeys"].service.verification.verify_key(key)
        assert computed(sized_scopes, verified) == number + 1  # the three keys share scopes
    assert state.cache.size >= 3 * cache.approximate_size(verified)
    assert state.limits._by_snapshot.size >= 3 * cache.approximate_size(verified)
