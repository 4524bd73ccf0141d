"""The service layer on SQLite and on a real PostgreSQL 15."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.errors import (
    AlreadyRevoked,
    AlreadyRotated,
    APIKeyNotFound,
    ExpiredAPIKey,
    InvalidAPIKey,
    InvalidInput,
    KeyLimitReached,
    OrganizationInactive,
    OrganizationNotFound,
    RevokedAPIKey,
)
from flask_apikeys.models import APIKey, Organization


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def count(db: Any, model: type) -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


def test_organization_gets_a_unique_slug_from_its_name(app: Flask, apikeys: APIKeys) -> None:
    with app.app_context():
        first = apikeys.create_organization(name="Acme Corp.", email="a@acme.com")
        second = apikeys.create_organization(name="Acme Corp", email="b@acme.com", plan="pro")
        assert (first.slug, second.slug) == ("acme-corp", "acme-corp-2")
        assert apikeys.get_organization("acme-corp-2").id == second.id
        assert apikeys.get_organization(str(first.id)).slug == "acme-corp"


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"name": "", "email": "a@b.co"}, "name"),
        ({"name": "A", "email": "not-an-email"}, "email"),
        ({"name": "A", "email": "a@b.co", "plan": "platinum"}, "plan"),
        ({"name": "A", "email": "a@b.co", "max_api_keys": -1}, "max_api_keys"),
        ({"name": "A", "email": "a@b.co", "slug": "Not A Slug"}, "slug"),
    ],
)
def test_bad_organization_input_is_refused_and_nothing_is_written(
    app: Flask, apikeys: APIKeys, db: Any, fields: dict[str, Any], bad: str
) -> None:
    with app.app_context():
        with pytest.raises(InvalidInput) as raised:
            apikeys.create_organization(**fields)
        assert bad in raised.value.errors
        assert count(db, Organization) == 0


def test_unknown_organization_is_not_found(app: Flask, apikeys: APIKeys) -> None:
    with app.app_context(), pytest.raises(OrganizationNotFound):
        apikeys.create_key("nobody", "k")


def test_created_key_is_stored_hashed_with_prefix_and_hint(
    app: Flask, apikeys: APIKeys, db: Any, organization: Any
) -> None:
    with app.app_context():
        created = apikeys.create_key(
            organization,
            "Prod Key",
            scopes=["presentations:read"],
            expires_in_days=90,
            rate_limit="100/minute",
            metadata={"customer": 42},
            description="for prod",
        )
        row = db.session.execute(
            sa.select(APIKey.key_hash, APIKey.key_prefix, APIKey.key_hint)
        ).one()
        assert created.key not in row.key_hash
        assert row.key_prefix == created.key[:12] and row.key_hint == created.key[-4:]
        record = created.api_key
        assert record.scopes == ["presentations:read"]
        assert record.custom_rate_limit == "100/minute"
        assert record.key_metadata == {"customer": 42}
        assert timedelta(days=89) < record.expires_at - datetime.now(UTC) <= timedelta(days=90)
        assert created.key not in repr(created)


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"environment": "prod"}, "environment"),
        ({"scopes": ["bad scope!"]}, "scopes"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"rate_limit": "lots"}, "rate_limit"),
        ({"metadata": ["not", "a", "mapping"]}, "metadata"),
        ({"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, "expires_at"),
    ],
)
def test_bad_key_input_is_refused_and_nothing_is_written(
    app: Flask, apikeys: APIKeys, db: Any, organization: Any, options: dict[str, Any], bad: str
) -> None:
    with app.app_context():
        with pytest.raises(InvalidInput) as raised:
            apikeys.create_key(organization, "k", **options)
        assert bad in raised.value.errors
        assert count(db, APIKey) == 0


def test_plan_key_limit_is_enforced_and_revoked_keys_free_a_slot(
    app: Flask, apikeys: APIKeys, db: Any
) -> None:
    with app.app_context():
        org = apikeys.create_organization(name="Small", email="s@small.io", plan="free")
        first = apikeys.create_key(org, "one")
        apikeys.create_key(org, "two")
        with pytest.raises(KeyLimitReached, match="allows 2"):
            apikeys.create_key(org, "three")
        assert count(db, APIKey) == 2
        apikeys.revoke_key(first.api_key.id, reason="make room")
        apikeys.create_key(org, "three")
        assert count(db, APIKey) == 3


def test_verify_accepts_a_good_key_and_names_each_refusal(
    app: Flask, apikeys: APIKeys, db: Any, organization: Any
) -> None:
    with app.app_context():
        created = apikeys.create_key(organization, "k", scopes=["a:read"])
        verified = apikeys.verify_key(created.key)
        assert verified.id == created.api_key.id and verified.has_scope("a:read")
        with pytest.raises(InvalidAPIKey, match="malformed"):
            apikeys.verify_key(created.key[:-1])
        other = apikeys.state.extension.service  # same service, unknown but well-formed key
        from flask_apikeys.keys import generate_key

        with pytest.raises(InvalidAPIKey, match="not recognised"):
            other.verification.verify_key(generate_key("pk", "live"))


def test_revoked_key_is_refused_and_revocation_is_final(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        created = apikeys.create_key(organization, "k")
        apikeys.verify_key(created.key)  # now cached
        revoked = apikeys.revoke_key(
            created.api_key.id, reason="Compromised", revoked_by="ops@x.io"
        )
        assert (revoked.revoked_reason, revoked.revoked_by) == ("Compromised", "ops@x.io")
        assert revoked.revoked_at is not None and not revoked.is_active
        with pytest.raises(RevokedAPIKey):
            apikeys.verify_key(created.key)
        with pytest.raises(AlreadyRevoked):
            apikeys.revoke_key(created.api_key.id, reason="again")


def test_expired_key_is_refused(app: Flask, apikeys: APIKeys, db: Any, organization: Any) -> None:
    with app.app_context():
        created = apikeys.create_key(organization, "k", expires_in_days=1)
        db.session.execute(
            sa.update(APIKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.session.commit()
        apikeys.state.cache.clear()
        with pytest.raises(ExpiredAPIKey):
            apikeys.verify_key(created.key)


def test_key_of_an_inactive_organization_is_refused(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        created = apikeys.create_key(organization, "k")
        apikeys.verify_key(created.key)
        apikeys.update_organization(organization, is_active=False)
        with pytest.raises(OrganizationInactive):
            apikeys.verify_key(created.key)


def test_rotation_keeps_settings_and_overlaps_then_the_old_key_ends(
    app: Flask, apikeys: APIKeys, db: Any, organization: Any
) -> None:
    with app.app_context():
        old = apikeys.create_key(
            organization,
            "Prod",
            scopes=["x:read", "y:*"],
            expires_in_days=30,
            rate_limit="5/second",
            metadata={"team": "a"},
            description="d",
        )
        old_id = old.api_key.id
        new = apikeys.rotate_key(old_id, overlap_hours=2)
        assert new.key != old.key
        record = new.api_key
        assert (record.name, record.scopes, record.custom_rate_limit, record.key_metadata) == (
            "Prod",
            ["x:read", "y:*"],
            "5/second",
            {"team": "a"},
        )
        assert timedelta(days=29) < record.expires_at - datetime.now(UTC) <= timedelta(days=30)
        old_record = apikeys.get_key(old_id)
        assert old_record.replaced_by_id == record.id
        assert old_record.expires_at - datetime.now(UTC) <= timedelta(hours=2)
        assert apikeys.verify_key(old.key).id == old_id  # still inside the overlap
        assert apikeys.verify_key(new.key).id == record.id
        db.session.execute(
            sa.update(APIKey)
            .where(APIKey.id == old_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.session.commit()
        apikeys.state.cache.clear()
        with pytest.raises(ExpiredAPIKey):
            apikeys.verify_key(old.key)
        assert apikeys.verify_key(new.key).id == record.id
        with pytest.raises(AlreadyRotated):
            apikeys.rotate_key(old_id)


def test_rotation_with_no_overlap_ends_the_old_key_at_once(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        old = apikeys.create_key(organization, "k")
        apikeys.verify_key(old.key)
        apikeys.rotate_key(old.api_key.id, overlap_hours=0)
        with pytest.raises(ExpiredAPIKey):
            apikeys.verify_key(old.key)
        with pytest.raises(AlreadyRotated):
            apikeys.rotate_key(old.api_key.id)


def test_rotation_at_the_plan_limit_works_without_an_overlap_only(
    app: Flask, apikeys: APIKeys
) -> None:
    """A key inside its overlap still authenticates, so it counts toward max_keys."""
    with app.app_context():
        org = apikeys.create_organization(name="Small", email="s@small.io", plan="free")
        apikeys.create_key(org, "one")
        second = apikeys.create_key(org, "two")
        with pytest.raises(KeyLimitReached, match="overlap_hours=0"):
            apikeys.rotate_key(second.api_key.id, overlap_hours=1)
        assert apikeys.get_key(second.api_key.id).replaced_by_id is None
        assert len(apikeys.list_keys(org)[0]) == 2
        rotated = apikeys.rotate_key(second.api_key.id, overlap_hours=0)
        assert apikeys.verify_key(rotated.key).name == "two"
        with pytest.raises(ExpiredAPIKey):
            apikeys.verify_key(second.key)


def test_list_keys_is_paginated_scoped_and_never_loads_hashes(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        other = apikeys.create_organization(name="Other", email="o@other.io", plan="pro")
        for number in range(3):
            apikeys.create_key(organization, f"k{number}")
        apikeys.create_key(other, "foreign")
        page, total = apikeys.list_keys(organization, limit=2)
        assert total == 3 and len(page) == 2
        assert all(key.organization_id == organization for key in page)
        assert all("key_hash" not in sa.inspect(key).dict for key in page)
        foreign_id = apikeys.list_keys(other)[0][0].id
        with pytest.raises(APIKeyNotFound):
            apikeys.get_key(foreign_id, organization=organization)
        with pytest.raises(APIKeyNotFound):
            apikeys.revoke_key(foreign_id, organization=organization)


def test_key_stored_under_a_retired_scheme_is_rehashed_on_use(
    database_url: str,
) -> None:
    from .factory import create_app

    legacy_app, _, legacy = create_app(database_url)
    with legacy_app.app_context():
        legacy.create_all()
        org = legacy.create_organization(name="Acme", email="a@acme.com")
        key = legacy.create_key(org, "k").key
        old_hash = legacy_app.extensions["sqlalchemy"].session.scalar(sa.select(APIKey.key_hash))
    with legacy_app.app_context():
        legacy_app.extensions["sqlalchemy"].engine.dispose()
    keyed_app, keyed_db, keyed = create_app(database_url, APIKEYS_HASH_SECRET="s" * 32)
    with keyed_app.app_context():
        assert keyed.verify_key(key).name == "k"
        new_hash = keyed_db.session.scalar(sa.select(APIKey.key_hash))
        assert new_hash != old_hash and new_hash.startswith("$hmac-sha256$")
        keyed.state.cache.clear()
        assert keyed.verify_key(key).name == "k"
    with keyed_app.app_context():
        keyed_db.engine.dispose()
