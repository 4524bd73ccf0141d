"""Verification: a presented key in, an immutable :class:`VerifiedKey` (or the reason) out.

The hot path of every request on a cache miss, so it is written for speed: one Core ``SELECT``
by the key's digest under the current scheme, compiled once and run on a connection kept for
it (:mod:`.lookup`: no ORM objects, no session), and the stored hash confirmed against that
digest in constant time. The key's organization comes from the cache's organizations, read by
id (a second point lookup) only when no key of it was read within the cache TTL.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import time
import uuid
from collections.abc import Mapping
from types import MappingProxyType, SimpleNamespace
from typing import Any

import sqlalchemy as sa

from .. import keys
from ..boundedcache import BoundedCache
from ..cache import OrganizationEntry
from ..errors import (
    APIKeyError,
    ExpiredAPIKey,
    InvalidAPIKey,
    OrganizationInactive,
    RevokedAPIKey,
)
from ..hashing import cache_digest
from ..identity import OrganizationInfo, VerifiedKey, build_verified_key
from ..models import APIKey, Organization
from ..network import Network
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
_KEY_COLUMNS = tuple(getattr(APIKey, name).label(name) for name in _VERIFY_KEY_FIELDS)
#: With the key cache on: the key's own columns; its organization comes from the cache's
#: organizations (:meth:`Verification._organization_by_id`).
_KEY_QUERY = sa.select(*_KEY_COLUMNS, APIKey.organization_id.label("organization_id"))
#: With the key cache off (``APIKEYS_CACHE_TTL = 0``): the organization joined, read each time.
_JOINED_QUERY = sa.select(
    *_KEY_COLUMNS,
    *(
        getattr(Organization, name).label(f"organization_{name}")
        for name in _VERIFY_ORGANIZATION_FIELDS
    ),
).join(Organization, APIKey.organization_id == Organization.id)
#: The organization of a key whose organization is not cached.
_ORGANIZATION_QUERY = sa.select(
    *(getattr(Organization, name) for name in _VERIFY_ORGANIZATION_FIELDS)
).where(Organization.id == sa.bindparam("organization_id"))
# Built once: SQLAlchemy then reuses its compiled form instead of deriving a cache key for a
# fresh statement on every call (which cost more than SQLite's own work). By "joined".
_BY_ID = {
    joined: query.where(APIKey.id == sa.bindparam("key_id"))
    for joined, query in ((False, _KEY_QUERY), (True, _JOINED_QUERY))
}
#: The lookup by the digest under the current scheme and secret: nearly every key's.
_BY_CURRENT_DIGEST = {
    joined: query.where(APIKey.key_hash == sa.bindparam("current"))
    for joined, query in ((False, _KEY_QUERY), (True, _JOINED_QUERY))
}
_BIND = {"mapper": APIKey}
NOT_RECOGNISED = "The API key is not recognised."
#: How many columns a row of ``_KEY_QUERY`` has; a joined row's organization columns follow
#: the key's (the first of them is the organization's id, as in a key row).
_KEY_ROW_LENGTH = len(_VERIFY_KEY_FIELDS) + 1
_ORGANIZATION_COLUMNS = slice(len(_VERIFY_KEY_FIELDS), None)
#: Columns whose values many keys share: converted once by the lookup, then reused (the
#: metadata too: most keys have none, ``{}``, and the snapshot copies what it is given).
_SHARED_COLUMNS = frozenset(
    {"scopes", "roles", "allowed_networks", "key_metadata"}
    | {f"organization_{name}" for name in _VERIFY_ORGANIZATION_FIELDS}
)
#: How many distinct organizations, scope combinations and network lists are remembered.
MAX_SHARED = 1024
NO_METADATA: Mapping[str, object] = MappingProxyType({})


def own_metadata(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """A snapshot's own read-only copy of metadata that the lookup converted once for every
    key with the same JSON: nested lists and objects copied too, so that a view changing one
    changes no other key's (of any organization). Flat metadata costs one shallow copy."""
    for value in metadata.values():
        if isinstance(value, dict | list):
            return MappingProxyType(copy.deepcopy(dict(metadata)))
    return MappingProxyType(dict(metadata))


@functools.cache
def _by_retired_digests(count: int, joined: bool) -> sa.Select[Any]:
    """The lookup by any of ``count`` digests: the current one, then retired schemes' and secrets'.

    One plain parameter per digest: an "expanding" ``IN`` would be re-rendered on every call.
    """
    query = _JOINED_QUERY if joined else _KEY_QUERY
    if count == 1:
        return query.where(APIKey.key_hash == sa.bindparam("d0"))
    return query.where(APIKey.key_hash.in_([sa.bindparam(f"d{index}") for index in range(count)]))


class Verification:
    """Authenticate presented keys and build the snapshots requests see."""

    def __init__(self, store: Store, organizations: Organizations) -> None:
        self.store = store
        self.organizations = organizations
        # Read on every request that misses the cache: one attribute away, not two.
        self.cache = store.cache
        self.settings = store.settings
        self.hasher = store.hasher
        self.lookup = KeyLookup(
            lambda: store.session.get_bind(mapper=APIKey).engine, _SHARED_COLUMNS
        )
        # What keys share, made once (see :meth:`_snapshot_of_row`). A full cache is emptied.
        self._organizations: BoundedCache[tuple[Any, ...], OrganizationEntry]
        self._organizations = BoundedCache(MAX_SHARED)
        self._scopes: BoundedCache[tuple[Any, ...], tuple[frozenset[str], frozenset[str]]]
        self._scopes = BoundedCache(MAX_SHARED)
        self._networks: BoundedCache[tuple[str, ...], tuple[Network, ...]]
        self._networks = BoundedCache(MAX_SHARED)

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
            if not keys.is_well_formed(presented, self.settings.key_prefix):
                raise InvalidAPIKey("The API key is malformed.")
            if self.cache.is_unknown(digest):
                raise InvalidAPIKey(NOT_RECOGNISED)
            changes_before = self.cache.changes  # a change while reading: not cached
            try:
                verified, read_at = self._load_verified_key(presented)
            except InvalidAPIKey:
                self.cache.put_unknown(digest)
                raise
            self.cache.put(digest, verified, read_at, changes_before)
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
            query = _BY_ID[self.cache.ttl_seconds <= 0]
            changes_before = self.cache.changes
            row = self._snapshot_row(query, {"key_id": key_id})
            if row is None:
                return None
            verified, read_at = self._snapshot_of_row(row)
            self.cache.put(cache_entry, verified, read_at, changes_before)
        return verified

    def check_usable(self, verified: VerifiedKey) -> None:
        """Raise if a verified key may not be used now: revoked, expired, organization off."""
        error: APIKeyError
        if verified.revoked_at is not None or not verified.is_active:
            error = RevokedAPIKey("This API key has been revoked.")
        elif (
            expires_at := verified.expires_at_timestamp
        ) is not None and time.time() >= expires_at:
            error = ExpiredAPIKey("This API key has expired.")
        elif not verified.organization.is_active:
            error = OrganizationInactive("The organization that owns this API key is inactive.")
        else:
            return
        raise error.about_key(verified.id, verified.organization.id)

    def _load_verified_key(self, presented: str) -> tuple[VerifiedKey, float | None]:
        """The snapshot of the key stored for ``presented``, found by its digest, and when
        the oldest part of it was read (:meth:`_snapshot_of_row`).

        By the current scheme's digest first: one point lookup, the common case. Only when no
        key is stored under it are the retired schemes' digests computed and looked for (an
        ``IN`` of several digests cost SQLite a third more than the point lookup, and one more
        digest); a key found that way is stored again under the current scheme.
        """
        joined = self.cache.ttl_seconds <= 0  # nothing cached: read the organization with it
        current = self.hasher.current_digest(presented)
        row = self._snapshot_row(_BY_CURRENT_DIGEST[joined], {"current": current})
        if row is not None and self.hasher.matches(current, row.key_hash):
            return self._snapshot_of_row(row)
        retired = self.hasher.retired_candidates(presented)
        if not retired:
            raise InvalidAPIKey(NOT_RECOGNISED)
        # The current digest again, in the same query: another request may have rehashed this
        # key between the two lookups (it would otherwise be a spurious 401, remembered).
        candidates = [current, *retired]
        query = _by_retired_digests(len(candidates), joined)
        row = self._snapshot_row(
            query, {f"d{index}": digest for index, digest in enumerate(candidates)}
        )
        matched = None if row is None else self.hasher.match_index(candidates, row.key_hash)
        if matched is None:
            raise InvalidAPIKey(NOT_RECOGNISED)
        if matched == 0:
            return self._snapshot_of_row(row)
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

    def _snapshot_of_row(self, row: Any) -> tuple[VerifiedKey, float | None]:
        """The immutable view of a key that requests see as ``current_key``, from a lookup row,
        and when its organization was read (the snapshot is cached as if stored then).

        What keys share is made once and shared: their organization's view and plan (cached by
        the organization's id beside the keys, :meth:`_organization_of`), their effective
        scopes (by scopes, roles and the roles' current definitions, level and plan) and their
        networks. A cache miss then builds only what is the key's own.
        """
        if len(row) > _KEY_ROW_LENGTH:
            read_at = None
            organization, plan = self._organization_of(row[_ORGANIZATION_COLUMNS])
        else:
            read_at, (organization, plan) = self._organization_by_id(row.organization_id)
        # Tuples from the lookup's shared columns (``tuple()`` returns them as they are); lists
        # where the driver parses JSON itself.
        own_scopes = tuple(row.scopes or ())
        roles = tuple(row.roles or ())
        level = row.level
        definitions = self.store.role_definitions  # may be redefined while the app runs
        role_scopes = tuple(map(definitions.get, roles)) if roles else ()
        scopes_entry = (own_scopes, roles, role_scopes, level, plan.scopes)
        scopes = self._scopes.get(scopes_entry)
        if scopes is None:
            effective = effective_scopes(own_scopes, roles, level, definitions)
            scopes = self._scopes.put(
                scopes_entry, (within_plan(effective, plan.scopes), frozenset(own_scopes))
            )
        networks = tuple(row.allowed_networks or ())
        if networks:
            networks = self._networks.get(networks) or self._networks.put(
                networks, tuple(ipaddress.ip_network(network) for network in networks)
            )
        metadata = row.key_metadata
        expires_at = row.expires_at
        verified = build_verified_key(
            id=row.id,
            organization=organization,
            name=row.name,
            environment=row.environment,
            prefix=row.key_prefix,
            hint=row.key_hint,
            scopes=scopes[0],
            metadata=own_metadata(metadata) if metadata else NO_METADATA,
            custom_rate_limit=row.custom_rate_limit,
            expires_at=expires_at,
            revoked_at=row.revoked_at,
            is_active=row.is_active,
            expires_at_timestamp=None if expires_at is None else expires_at.timestamp(),
            own_scopes=scopes[1],
            roles=roles,
            level=level,
            allowed_networks=networks,
        )
        return verified, read_at

    def _organization_by_id(self, organization_id: uuid.UUID) -> tuple[float, OrganizationEntry]:
        """The organization's view and effective plan, and when they were read: from the
        cache's organizations (emptied with its keys on every announced change), else read
        by id and cached there.

        A key found by its digest then costs SQLite no join and the lookup eight columns
        fewer (``bench/README.md``).
        """
        known = self.cache.organization(organization_id)
        if known is not None:
            return known
        changes_before = self.cache.organization_changes
        columns = self._snapshot_row(_ORGANIZATION_QUERY, {"organization_id": organization_id})
        if columns is None:  # deleted with its keys since the key was read
            raise InvalidAPIKey(NOT_RECOGNISED)
        entry = self._organization_of(tuple(columns))
        return self.cache.put_organization(organization_id, entry, changes_before), entry

    def _organization_of(self, columns: tuple[Any, ...]) -> OrganizationEntry:
        """The organization's view and effective plan, made once per distinct set of columns
        (``_VERIFY_ORGANIZATION_FIELDS``, in order): a change to any column makes a new one."""
        known = self._organizations.get(columns)
        if known is None:
            organization = SimpleNamespace(
                **dict(zip(_VERIFY_ORGANIZATION_FIELDS, columns, strict=True))
            )
            plan = self.organizations.plan_of(organization)  # type: ignore[arg-type]
            info = OrganizationInfo(
                id=organization.id,
                name=organization.name,
                slug=organization.slug,
                plan=organization.plan,
                is_active=organization.is_active,
                rate_limit_per_minute=plan.requests_per_minute,
                monthly_request_limit=plan.monthly_requests,
            )
            known = self._organizations.put(columns, (info, plan))
        return known
