"""The snapshots requests see (identity.py): the cheap builder makes the very same object."""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import uuid
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_apikeys.identity import OrganizationInfo, VerifiedKey, build_verified_key

from .factory import create_app

texts = st.text(max_size=12)
scope_sets = st.frozensets(st.sampled_from(["read", "write", "admin:*", "reports:read"]))
moments = st.none() | st.datetimes(timezones=st.just(UTC))
organizations = st.builds(
    OrganizationInfo,
    id=st.uuids(),
    name=texts,
    slug=texts,
    plan=st.sampled_from(["free", "pro", "enterprise"]),
    is_active=st.booleans(),
    rate_limit_per_minute=st.none() | st.integers(0, 10**6),
    monthly_request_limit=st.none() | st.integers(0, 10**9),
)
snapshot_fields = st.fixed_dictionaries(
    {
        "id": st.uuids(),
        "organization": organizations,
        "name": texts,
        "environment": st.sampled_from(["live", "test"]),
        "prefix": texts,
        "hint": texts,
        "scopes": scope_sets,
        "metadata": st.dictionaries(texts, st.integers()).map(MappingProxyType),
        "custom_rate_limit": st.none() | st.just("10/minute"),
        "expires_at": moments,
        "revoked_at": moments,
        "is_active": st.booleans(),
        "expires_at_timestamp": st.none() | st.floats(0, 2e9),
        "own_scopes": scope_sets,
        "roles": st.lists(texts, max_size=3).map(tuple),
        "level": st.none() | st.sampled_from(["read", "admin"]),
        "allowed_networks": st.lists(
            st.sampled_from(["10.0.0.0/8", "192.168.1.0/24", "::1/128"]).map(ipaddress.ip_network),
            max_size=2,
        ).map(tuple),
    }
)


def test_the_builder_takes_every_field_of_the_snapshot_in_order() -> None:
    """A field added to VerifiedKey must be added to the builder too (else it stays unset)."""
    parameters = list(inspect.signature(build_verified_key).parameters)
    assert parameters == [field.name for field in dataclasses.fields(VerifiedKey)]


def hash_or_error(snapshot: VerifiedKey) -> object:
    """The snapshot's hash, or the error hashing it raises (its metadata proxy is unhashable)."""
    try:
        return hash(snapshot)
    except TypeError as error:
        return str(error)


@given(snapshot_fields)
def test_a_built_snapshot_is_the_one_the_constructor_makes(fields: dict[str, Any]) -> None:
    """Same class, every field, equality and hash; frozen; replace() still works."""
    built = build_verified_key(**fields)
    constructed = VerifiedKey(**fields)
    assert type(built) is VerifiedKey
    for field in dataclasses.fields(VerifiedKey):
        assert getattr(built, field.name) is getattr(constructed, field.name)
    assert built == constructed and constructed == built
    assert hash_or_error(built) == hash_or_error(constructed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.name = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del built.scopes  # type: ignore[misc]
    renamed = dataclasses.replace(built, name="other")
    assert type(renamed) is VerifiedKey
    assert renamed == dataclasses.replace(constructed, name="other")
    assert not hasattr(built, "__dict__")


def test_a_cache_miss_builds_the_snapshot_the_constructor_would(backend_url: str) -> None:
    """Through the service: the snapshot of a stored key, field by field, and what it says."""
    app, db, apikeys = create_app(backend_url, APIKEYS_CACHE_TTL=0, APIKEYS_AUDIT=False)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        created = apikeys.create_key(
            org,
            "one",
            scopes=["read"],
            metadata={"team": "a"},
            allowed_networks=["10.0.0.0/8"],
            expires_at=expires,
        )
        verified = apikeys.verify_key(created.key)
        rebuilt = VerifiedKey(
            **{field.name: getattr(verified, field.name) for field in dataclasses.fields(verified)}
        )
        assert type(verified) is VerifiedKey and verified == rebuilt
        assert verified.id == created.api_key.id and isinstance(verified.id, uuid.UUID)
        assert verified.organization.id == org.id and verified.name == "one"
        assert verified.scopes == frozenset({"read"}) and verified.has_scope("read")
        assert dict(verified.metadata) == {"team": "a"}
        assert verified.expires_at == expires and not verified.is_expired()
        assert verified.expires_at_timestamp == expires.timestamp()
        assert [str(network) for network in verified.allowed_networks] == ["10.0.0.0/8"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            verified.is_active = False  # type: ignore[misc]
        apikeys.close(app)
        db.session.remove()
        db.engine.dispose()
