"""Organizations cached by id beside the verified keys (cache.py, service/verification.py).

A key that misses the cache takes its organization from the cache when another key of that
organization was read within the TTL. Every organization change that alters what a key may do
(plan, rate limit, monthly quota, active flag) must reach a key read afterwards, in this
process at once and in the others within the check interval, however long the TTL: the tests
below read a *second* key of the organization after the change, which only a stale
organization entry would get wrong (the first key's own entry is dropped anyway).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_apikeys.cache import MAX_ORGANIZATIONS, VerifiedKeyCache
from flask_apikeys.config_parsers import Plan
from flask_apikeys.errors import InvalidAPIKey, OrganizationInactive
from flask_apikeys.identity import OrganizationInfo, VerifiedKey

CHECK_INTERVAL = 0.2
PLANS = {
    "basic": {
        "requests_per_minute": 10,
        "monthly_requests": 1_000,
        "max_keys": 10,
        "scopes": ["presentations:read"],
    },
    "pro": {"requests_per_minute": 60, "monthly_requests": 100_000, "max_keys": 10},
}
LONG_TTL = {
    "APIKEYS_CACHE_TTL": 300,
    "APIKEYS_RATELIMIT_ENABLED": False,
    "APIKEYS_AUDIT": False,
    "APIKEYS_PLANS": PLANS,
}


def what_the_key_may_do(verified: VerifiedKey) -> tuple[Any, ...]:
    organization = verified.organization
    return (
        organization.plan,
        organization.rate_limit_per_minute,
        organization.monthly_request_limit,
        verified.scopes,
    )


#: (the change, what a key of the organization may do after it)
CHANGES: dict[str, tuple[dict[str, Any], tuple[Any, ...]]] = {
    "plan": (
        {"plan": "basic"},
        ("basic", 10, 1_000, frozenset({"presentations:read"})),
    ),
    "rate-limit": (
        {"rate_limit_per_minute": 7},
        ("pro", 7, 100_000, frozenset({"presentations:read", "presentations:write"})),
    ),
    "monthly-quota": (
        {"monthly_request_limit": 5},
        ("pro", 60, 5, frozenset({"presentations:read", "presentations:write"})),
    ),
}
BEFORE = ("pro", 60, 100_000, frozenset({"presentations:read", "presentations:write"}))


def organization_with_two_keys(app: Flask) -> tuple[uuid.UUID, str, str]:
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        first, second = (
            apikeys.create_key(
                organization, name, scopes=["presentations:read", "presentations:write"]
            ).key
            for name in ("first", "second")
        )
        return organization.id, first, second


def verify(app: Flask, key: str) -> VerifiedKey:
    with app.app_context():
        return app.extensions["apikeys"].extension.verify_key(key)  # type: ignore[no-any-return]


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_an_organization_change_reaches_the_next_key_read_in_this_process(
    make_app: Callable[..., Flask], backend_url: str, change: str
) -> None:
    app = make_app(backend_url, **LONG_TTL)
    organization_id, first, second = organization_with_two_keys(app)
    assert what_the_key_may_do(verify(app, first)) == BEFORE  # its organization now cached
    values, after = CHANGES[change]
    with app.app_context():
        app.extensions["apikeys"].extension.update_organization(organization_id, **values)
    assert what_the_key_may_do(verify(app, second)) == after
    assert what_the_key_may_do(verify(app, first)) == after


def test_a_deactivated_organization_refuses_its_other_keys_in_this_process(
    make_app: Callable[..., Flask], backend_url: str
) -> None:
    app = make_app(backend_url, **LONG_TTL)
    organization_id, first, second = organization_with_two_keys(app)
    client = app.test_client()
    assert client.get("/v1/presentations", headers={"X-API-Key": first}).status_code == 200
    with app.app_context():
        app.extensions["apikeys"].extension.update_organization(organization_id, is_active=False)
    refused = client.get("/v1/presentations", headers={"X-API-Key": second})
    assert refused.status_code == 403, refused.get_json()
    with pytest.raises(OrganizationInactive):
        verify(app, second)


@pytest.mark.parametrize("change", [*CHANGES, "deactivate"])
def test_an_organization_change_in_one_process_reaches_another_within_the_check_interval(
    make_app: Callable[..., Flask], backend_url: str, change: str
) -> None:
    """Two apps on one database stand for two workers; the serving one caches for 300 s."""
    serving = make_app(backend_url, **LONG_TTL, APIKEYS_CACHE_CHECK_INTERVAL=CHECK_INTERVAL)
    changing = make_app(backend_url, **LONG_TTL)
    organization_id, first, second = organization_with_two_keys(changing)
    assert what_the_key_may_do(verify(serving, first)) == BEFORE
    values, after = CHANGES.get(change, ({"is_active": False}, None))
    with changing.app_context():
        changing.extensions["apikeys"].extension.update_organization(organization_id, **values)
    time.sleep(CHECK_INTERVAL + 0.05)
    if after is None:
        refused = serving.test_client().get("/v1/presentations", headers={"X-API-Key": second})
        assert refused.status_code == 403, refused.get_json()
    else:
        assert what_the_key_may_do(verify(serving, second)) == after


class SteppedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_read_with_a_cached_organization_expires_with_that_organization(
    make_app: Callable[..., Flask],
) -> None:
    """A change no process announced (written to the table directly) is seen once the TTL has
    passed since the organization was read, even by a key cached later with that organization:
    nothing a request sees is older than the TTL."""
    app = make_app(**{**LONG_TTL, "APIKEYS_CACHE_TTL": 10})
    cache = app.extensions["apikeys"].cache
    clock = cache.clock = SteppedClock()
    organization_id, first, second = organization_with_two_keys(app)
    assert verify(app, first).organization.rate_limit_per_minute == 60  # read at 1000
    clock.now += 9
    assert verify(app, second).organization.rate_limit_per_minute == 60  # cached at 1009
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        db.session.execute(
            db.text("UPDATE organizations SET rate_limit_per_minute = 7 WHERE id = :id"),
            {"id": organization_id.hex},
        )
        db.session.commit()
    clock.now += 0.5
    assert verify(app, second).organization.rate_limit_per_minute == 60  # within the TTL
    clock.now += 0.5  # 10 s since the organization was read, 1 s since the second key was
    assert verify(app, second).organization.rate_limit_per_minute == 7


def test_an_organization_read_before_a_change_is_not_kept() -> None:
    """A lookup that read the organization before a change was made (by another thread of
    this process) returns what it read, but does not cache it for the keys read after."""
    cache = VerifiedKeyCache(ttl_seconds=60)
    organization_id = uuid.uuid4()
    stale = entry_for(organization_id, rate_limit=60)
    changes_before = cache.organization_changes
    cache.forget_organization(organization_id)  # the change, while the row was being read
    cache.put_organization(organization_id, stale, changes_before)
    assert cache.organization(organization_id) is None
    fresh = entry_for(organization_id, rate_limit=7)
    cache.put_organization(organization_id, fresh, cache.organization_changes)
    known = cache.organization(organization_id)
    assert known is not None and known[1] is fresh


def test_many_organizations_do_not_grow_the_cache_without_bound() -> None:
    cache = VerifiedKeyCache(ttl_seconds=60)
    entry = entry_for(uuid.uuid4(), rate_limit=60)
    largest = 0
    for _ in range(100_000):
        cache.put_organization(uuid.uuid4(), entry, cache.organization_changes)
        largest = max(largest, cache.organization_count)
    assert largest == MAX_ORGANIZATIONS
    assert cache.organization_count <= MAX_ORGANIZATIONS


def test_without_a_cache_ttl_no_organization_is_cached(make_app: Callable[..., Flask]) -> None:
    """``APIKEYS_CACHE_TTL = 0``: every lookup reads the organization with the key (joined)."""
    app = make_app(**{**LONG_TTL, "APIKEYS_CACHE_TTL": 0})
    organization_id, first, _ = organization_with_two_keys(app)
    assert verify(app, first).organization.rate_limit_per_minute == 60
    assert app.extensions["apikeys"].cache.organization_count == 0
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        db.session.execute(
            db.text("UPDATE organizations SET rate_limit_per_minute = 7 WHERE id = :id"),
            {"id": organization_id.hex},
        )
        db.session.commit()
    assert verify(app, first).organization.rate_limit_per_minute == 7


def test_a_key_whose_organization_is_gone_is_not_recognised(make_app: Callable[..., Flask]) -> None:
    """The key's row read, its organization no longer there (both deleted at once, directly
    in the tables): refused as unknown, as the join refused it."""
    app = make_app(**LONG_TTL)
    organization_id, first, _ = organization_with_two_keys(app)
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        db.session.execute(db.text("PRAGMA foreign_keys = OFF"))
        db.session.execute(
            db.text("DELETE FROM organizations WHERE id = :id"), {"id": organization_id.hex}
        )
        db.session.commit()
    with pytest.raises(InvalidAPIKey):
        verify(app, first)


def entry_for(organization_id: uuid.UUID, *, rate_limit: int) -> tuple[OrganizationInfo, Plan]:
    info = OrganizationInfo(organization_id, "Acme", "acme", "pro", True, rate_limit, 1_000)
    return info, Plan("pro", rate_limit, 1_000, 10, None)
