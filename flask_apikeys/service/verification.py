"""Verification: a presented key in, an immutable :class:`VerifiedKey` (or the reason) out.

The hot path of every request on a cache miss, so it is written for speed: one Core ``SELECT``
by the key's digest, joined to its organization, compiled once and run on a connection kept for
it (:mod:`.lookup`: no ORM objects, no session), and the stored hash confirmed against the
digests we looked it up by in constant time.
"""

from __future__ import annotations

import functools
import ipaddress
import time
import uuid
from types import MappingProxyType, SimpleNamespace
from typing import Any

import sqlalchemy as sa

from .. import keys
from ..errors import ExpiredAPIKey, InvalidAPIKey, OrganizationInactive, RevokedAPIKey
from ..hashing import cache_digest
from ..identity import OrganizationInfo, VerifiedKey
from ..models import APIKey, Organization
from ..permissions import effective_scopes, within_plan
from .lookup import USE_SESSION, KeyLookup
from .organizations import Organizations
from .store import Store

#: What :meth:`Verification.snapshot` reads of a key and of its organization.
_VERIFY_KEY_FIELDS = (
    "id",
    "key_hash",
    "key_prefix",
    "key_hint",
    "name",
    "environment",
    "is_active",
    "expires_at",
    "revoked_at",
    "scopes",
    "roles",
    "level",
    "allowed_networks",
    "custom_rate_limit",
    "key_metadata",
)
_VERIFY_ORGANIZATION_FIELDS = (
    "id",
    "name",
    "slug",
    "plan",
    "is_active",
    "rate_limit_per_minute",
    "monthly_request_limit",
    "max_api_keys",
)
_SNAPSHOT_QUERY = sa.select(
    *(getattr(APIKey, name).label(name) for name in _VERIFY_KEY_FIELDS),
    *(
        getattr(Organization, name).label(f"organization_{name}")
        for name in _VERIFY_ORGANIZATION_FIELDS
    ),
).join(Organization, APIKey.organization_id == Organization.id)
# Built once: SQLAlchemy then reuses its compiled form instead of deriving a cache key for a
# fresh statement on every call (which cost more than SQLite's own work).
_BY_ID = _SNAPSHOT_QUERY.where(APIKey.id == sa.bindparam("key_id"))
_BIND = {"mapper": APIKey}
NOT_RECOGNISED = "The API key is not recognised."


@functools.cache
def _by_digests(count: int) -> sa.Select[Any]:
    """The lookup by any of ``count`` digests (one per configured scheme and secret).

    One plain parameter per digest: an "expanding" ``IN`` would be re-rendered on every call.
    """
    if count == 1:
        return _SNAPSHOT_QUERY.where(APIKey.key_hash == sa.bindparam("d0"))
    return _SNAPSHOT_QUERY.where(
        APIKey.key_hash.in_([sa.bindparam(f"d{index}") for index in range(count)])
    )


class Verification:
    """Authenticate presented keys and build the snapshots requests see."""

    def __init__(self, store: Store, organizations: Organizations) -> None:
        self.store = store
        self.organizations = organizations
        # Read on every request that misses the cache: one attribute away, not two.
        self.cache = store.cache
        self.settings = store.settings
        self.hasher = store.hasher
        self.lookup = KeyLookup(lambda: store.session.get_bind(mapper=APIKey).engine)

    def verify_key(self, presented: str) -> VerifiedKey:
        """Authenticate a presented key, or raise the error that says why not.

        Order matters: the format and checksum first (no I/O), then the cache or one indexed
        query, the hash compared in constant time, and only then the key's state.
        """
        if len(presented) > keys.MAX_KEY_LENGTH:
            raise InvalidAPIKey("The API key is malformed.")
        digest = cache_digest(presented)
        verified = self.cache.get(digest)  # only keys that passed every check below get cached
        if verified is None:
            if keys.parse_key(presented, self.settings.key_prefix) is None:
                raise InvalidAPIKey("The API key is malformed.")
            if self.cache.is_unknown(digest):
                raise InvalidAPIKey(NOT_RECOGNISED)
            try:
                verified = self._load_verified_key(presented)
            except InvalidAPIKey:
                self.cache.put_unknown(digest)
                raise
            self.cache.put(digest, verified)
        self.check_usable(verified)
        return verified

    def verified_key_by_id(self, key_id: uuid.UUID) -> VerifiedKey | None:
        """The snapshot of a key found by id, or ``None`` if there is no such key.

        For access tokens, which name their key instead of carrying it. Cached like
        :meth:`verify_key` (so revocation here drops it at once, elsewhere within the TTL);
        the caller decides which of the key's states it accepts.
        """
        cache_entry = b"id:" + key_id.bytes  # never equal to a key digest (32 bytes)
        verified = self.cache.get(cache_entry)
        if verified is None:
            row = self._snapshot_row(_BY_ID, {"key_id": key_id})
            if row is None:
                return None
            verified = self._snapshot_of_row(row)
            self.cache.put(cache_entry, verified)
        return verified

    def check_usable(self, verified: VerifiedKey) -> None:
        """Raise if a verified key may not be used now: revoked, expired, organization off."""
        if verified.revoked_at is not None or not verified.is_active:
            raise RevokedAPIKey("This API key has been revoked.")
        expires_at = verified.expires_at_timestamp  # is_expired(), without the call
        if expires_at is not None and time.time() >= expires_at:
            raise ExpiredAPIKey("This API key has expired.")
        if not verified.organization.is_active:
            raise OrganizationInactive("The organization that owns this API key is inactive.")

    def _load_verified_key(self, presented: str) -> VerifiedKey:
        digests = self.hasher.lookup_candidates(presented)
        query = _by_digests(len(digests))
        row = self._snapshot_row(
            query, {f"d{index}": digest for index, digest in enumerate(digests)}
        )
        matched = None if row is None else self.hasher.match_index(digests, row.key_hash)
        if matched is None:
            raise InvalidAPIKey(NOT_RECOGNISED)
        if matched != 0:  # stored under a retired scheme or secret: store it under the current one
            rehash = sa.update(APIKey).where(APIKey.id == row.id)
            rehash = rehash.values(key_hash=self.hasher.hash(presented))

            def store_new_hash() -> None:
                self.store.session.execute(rehash)

            self.store.commit(store_new_hash)
        return self._snapshot_of_row(row)

    def _snapshot_row(self, query: sa.Select[Any], parameters: dict[str, Any]) -> Any:
        """The one row ``query`` finds, or ``None``; a database failure becomes a 503."""
        row = self.lookup.first(query, parameters)
        if row is not USE_SESSION:
            return row
        return self.store.read(
            lambda: (
                self.store.session.connection(bind_arguments=_BIND)
                .execute(query, parameters)
                .first()
            )
        )

    def _snapshot_of_row(self, row: Any) -> VerifiedKey:
        organization = SimpleNamespace(
            **{name: getattr(row, f"organization_{name}") for name in _VERIFY_ORGANIZATION_FIELDS}
        )
        # The row has the key's fields by name; both stand in for the ORM objects.
        return self.snapshot(row, organization)  # type: ignore[arg-type]

    def snapshot(self, api_key: APIKey, organization: Organization) -> VerifiedKey:
        """The immutable view of a key that requests see as ``current_key``.

        Reads only the attributes in ``_VERIFY_KEY_FIELDS`` and ``_VERIFY_ORGANIZATION_FIELDS``
        (verification passes plain rows with just those).
        """
        plan = self.organizations.plan_of(organization)
        expires_at = api_key.expires_at
        return VerifiedKey(
            id=api_key.id,
            organization=OrganizationInfo(
                id=organization.id,
                name=organization.name,
                slug=organization.slug,
                plan=organization.plan,
                is_active=organization.is_active,
                rate_limit_per_minute=plan.requests_per_minute,
                monthly_request_limit=plan.monthly_requests,
            ),
            name=api_key.name,
            environment=api_key.environment,
            prefix=api_key.key_prefix,
            hint=api_key.key_hint,
            scopes=within_plan(
                effective_scopes(
                    api_key.scopes or (),
                    api_key.roles or (),
                    api_key.level,
                    self.store.role_definitions,
                ),
                plan.scopes,
            ),
            metadata=MappingProxyType(dict(api_key.key_metadata or {})),
            custom_rate_limit=api_key.custom_rate_limit,
            expires_at=expires_at,
            revoked_at=api_key.revoked_at,
            is_active=api_key.is_active,
            expires_at_timestamp=None if expires_at is None else expires_at.timestamp(),
            own_scopes=frozenset(api_key.scopes or ()),
            roles=tuple(api_key.roles or ()),
            level=api_key.level,
            allowed_networks=tuple(
                ipaddress.ip_network(network) for network in api_key.allowed_networks or ()
            ),
        )
