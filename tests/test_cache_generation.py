"""A change made through one process empties the key caches of the others within the check
interval, however long their cache TTL (two apps on one database stand for two workers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from limits.storage import storage_from_string
from redis.exceptions import RedisError

from flask_apikeys.cache_generation import FileGeneration, RedisGeneration

LONG_TTL = {"APIKEYS_CACHE_TTL": 300, "APIKEYS_RATELIMIT_ENABLED": False}
CHECK_INTERVAL = 0.2


def revoke(app: Flask, key_id: Any, organization_id: Any) -> None:
    app.extensions["apikeys"].service.keys.revoke_key(key_id)


def rotate(app: Flask, key_id: Any, organization_id: Any) -> None:
    app.extensions["apikeys"].service.keys.rotate_key(key_id, overlap_hours=0)


def deactivate(app: Flask, key_id: Any, organization_id: Any) -> None:
    app.extensions["apikeys"].service.organizations.update_organization(
        organization_id, is_active=False
    )


@pytest.mark.parametrize("change", [revoke, rotate, deactivate])
def test_a_change_in_one_process_reaches_a_long_lived_cache_in_another(
    make_app: Callable[..., Flask], change: Callable[[Flask, Any, Any], None]
) -> None:
    serving = make_app(**LONG_TTL, APIKEYS_CACHE_CHECK_INTERVAL=CHECK_INTERVAL)
    changing = make_app(**LONG_TTL)
    apikeys = changing.extensions["apikeys"].extension
    with changing.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io")
        created = apikeys.create_key(organization, "shared", scopes=["presentations:read"])
        key_id, organization_id = created.api_key.id, organization.id
    client = serving.test_client()
    headers = {"X-API-Key": created.key}
    assert client.get("/v1/presentations", headers=headers).status_code == 200  # now cached

    with changing.app_context():
        change(changing, key_id, organization_id)
    time.sleep(CHECK_INTERVAL + 0.05)
    refused = client.get("/v1/presentations", headers=headers)
    assert refused.status_code in (401, 403), refused.get_json()


def test_without_an_announcement_a_long_lived_cache_keeps_the_key(
    make_app: Callable[..., Flask],
) -> None:
    """The control: a change that no process announced (written to the table directly) is
    seen only when the entry expires. The announcement, not the interval, empties caches."""
    serving = make_app(**LONG_TTL, APIKEYS_CACHE_CHECK_INTERVAL=CHECK_INTERVAL)
    apikeys = serving.extensions["apikeys"].extension
    with serving.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io")
        created = apikeys.create_key(organization, "shared", scopes=["presentations:read"])
    client = serving.test_client()
    headers = {"X-API-Key": created.key}
    assert client.get("/v1/presentations", headers=headers).status_code == 200
    with serving.app_context():
        db = serving.extensions["sqlalchemy"]
        db.session.execute(
            db.text("UPDATE api_keys SET is_active = 0 WHERE id = :id"),
            {"id": created.api_key.id.hex},
        )
        db.session.commit()
    time.sleep(CHECK_INTERVAL + 0.05)
    assert client.get("/v1/presentations", headers=headers).status_code == 200


def test_the_file_changes_with_every_announcement(tmp_path: Any) -> None:
    reader = FileGeneration(str(tmp_path / "keys.generation"))
    writer = FileGeneration(str(tmp_path / "keys.generation"))
    assert reader.current() is None  # nothing announced yet
    seen = set()
    for _ in range(5):
        writer.announce()
        seen.add(reader.current())
    assert len(seen) == 5


def test_redis_carries_announcements_between_hosts(redis_url: str) -> None:
    storage = storage_from_string(redis_url)
    reader = RedisGeneration(lambda: (storage, (RedisError,)))
    writer = RedisGeneration(lambda: (storage_from_string(redis_url), (RedisError,)))
    before = reader.current()
    writer.announce()
    assert reader.current() != before


def test_an_unreachable_redis_empties_the_cache_rather_than_trusting_it() -> None:
    storage = storage_from_string("redis://127.0.0.1:1")
    reader = RedisGeneration(lambda: (storage, (RedisError,)))
    assert reader.current() != reader.current()  # never equal: every check empties the cache
