"""A key's life: created (shown once), listed, changed, revoked for good, rotated, seeded.

Methods validate all of their input before writing anything and commit through the
:class:`~.store.Store`, so a refused call leaves the database as it was. What a key may be
given is decided by :class:`~.grants.Grants` (nobody gets more than they hold).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from .. import keys
from ..config import parse_roles as config_roles
from ..errors import (
    AlreadyRevoked,
    AlreadyRotated,
    APIKeyNotFound,
    ExpiredAPIKey,
    InvalidInput,
)
from ..identity import VerifiedKey
from ..logmask import mask_secrets
from ..models import APIKey, Organization, utcnow
from ..storable import unstorable_reason
from . import validation
from .grants import Grants
from .organizations import Organizations, as_uuid
from .store import Store

DEFAULT_ORGANIZATION_SLUG = "default"
DEFAULT_KEY_NAME = "Default Test Key"
#: What a key holds, as columns: a key asking for a key must hold all of it (no escalation).
GRANTED_FIELDS = (
    "scopes",
    "roles",
    "level",
    "expires_at",
    "custom_rate_limit",
    "allowed_networks",
)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: ``key`` is the full secret, available here once and never again."""

    key: str
    api_key: APIKey

    def __repr__(self) -> str:
        # Never let the secret reach a log through repr().
        return f"<CreatedKey {self.api_key.key_prefix}…{self.api_key.key_hint}>"


class KeyLifecycle:
    """Keys from creation to revocation: create, list, read, update, revoke, rotate, seed."""

    def __init__(self, store: Store, organizations: Organizations, grants: Grants) -> None:
        self.store = store
        self.organizations = organizations
        self.grants = grants

    def create_key(
        self,
        organization: Organization | uuid.UUID | str,
        name: str,
        environment: str = "live",
        scopes: Iterable[str] | str | None = None,
        *,
        description: str | None = None,
        expires_in_days: int | None = None,
        expires_at: datetime | None = None,
        rate_limit: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        roles: Iterable[str] | str | None = None,
        level: str | None = None,
        allowed_networks: Iterable[str] | str | None = None,
        granted_by: VerifiedKey | None = None,
        actor: str | None = None,
    ) -> CreatedKey:
        """Create a key; the returned :class:`CreatedKey` holds the full key, this once.

        :param roles: names from ``APIKEYS_ROLES`` whose scopes the key also gets.
        :param level: ``read-only``, ``read-write`` or ``admin``.
        :param granted_by: the key asking for this one (the admin API passes it). The new key
            may hold nothing that ``granted_by`` does not: no scope (its level's and roles'
            included), no later expiry, no higher rate limit, no network outside its own; a
            revoked key, or one replaced in a rotation, grants nothing. ``None`` (the CLI, the
            bootstrap key, Python code) is trusted.
        """
        organization = self.organizations.get_organization(organization)
        given: dict[str, Any] = {
            "name": name,
            "environment": environment,
            "scopes": scopes,
            "description": description,
            "rate_limit": rate_limit,
            "metadata": metadata,
            "roles": roles,
            "level": level,
            "allowed_networks": allowed_networks,
        }
        if expires_in_days is not None and expires_at is not None:
            raise InvalidInput(errors={"expires_at": ["give expires_in_days or expires_at"]})
        if expires_in_days is not None:
            given["expires_in_days"] = expires_in_days
        else:
            given["expires_at"] = expires_at
        values = self._key_columns(validation.check_fields(given, self._key_checkers()))
        self.grants.refuse_escalation(organization, values, granted_by)
        created = self._insert_key(organization, values)
        self.store.notify("key.created", api_key=created.api_key, actor=actor)
        return created

    def list_keys(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        include_revoked: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[APIKey], int]:
        """A page of an organization's keys, newest first (records only, never a secret)."""
        organization = self.organizations.get_organization(organization)
        query = sa.select(APIKey).where(APIKey.organization_id == organization.id)
        if not include_revoked:
            query = query.where(APIKey.revoked_at.is_(None))
        # Both descending: the organization's (created_at, id) index read backwards.
        query = query.order_by(APIKey.created_at.desc(), APIKey.id.desc())
        return self.store.page(query, limit, offset)

    def get_key(
        self,
        key_id: uuid.UUID | str,
        *,
        organization: Organization | uuid.UUID | str | None = None,
    ) -> APIKey:
        """A key record by id; with ``organization``, another organization's key is not found."""
        identifier = as_uuid(key_id)
        api_key = None
        if identifier is not None:
            api_key = self.store.read(lambda: self.store.session.get(APIKey, identifier))
        if api_key is not None and organization is not None:
            if api_key.organization_id != self.organizations.get_organization(organization).id:
                api_key = None
        if api_key is None:
            # A key pasted where its id belongs is not printed back (terminals, logs keep it).
            raise APIKeyNotFound(f"No API key {mask_secrets(repr(str(key_id)))}.")
        return api_key

    def update_key(
        self,
        key_id: uuid.UUID | str,
        *,
        organization: Organization | uuid.UUID | str | None = None,
        granted_by: VerifiedKey | None = None,
        actor: str | None = None,
        **changes: Any,
    ) -> APIKey:
        """Change a key's name, description, scopes, roles, level, rate limit or metadata.

        The change reaches requests at once in this process and within ``APIKEYS_CACHE_TTL``
        in others. A revoked key cannot be changed.
        """
        api_key = self.get_key(key_id, organization=organization)
        if api_key.revoked_at is not None:
            raise AlreadyRevoked("A revoked key cannot be changed.")
        checkers = self._key_checkers()
        for fixed in ("environment", "expires_in_days", "expires_at"):
            checkers.pop(fixed)
        values = self._key_columns(validation.check_fields(changes, checkers))
        current = {field: getattr(api_key, field) for field in GRANTED_FIELDS}
        self.grants.refuse_escalation(api_key.organization, {**current, **values}, granted_by)
        changed = sorted(
            field for field, value in values.items() if getattr(api_key, field) != value
        )
        # Conditional, as a revocation is: one committed since the key was read wins.
        change = (
            sa.update(APIKey)
            .where(APIKey.id == api_key.id, APIKey.revoked_at.is_(None))
            .values({field: values[field] for field in changed})
            .execution_options(synchronize_session=False)
        )

        def write() -> None:
            if changed and self.store.session.execute(change).rowcount != 1:  # type: ignore[attr-defined]
                raise AlreadyRevoked("The key was revoked by another request just now.")

        self.store.commit(write, api_key)
        self.store.cache.forget_key(api_key.id)
        if changed:
            self.store.notify("key.updated", api_key=api_key, actor=actor, changes=changed)
        return api_key

    def define_role(self, name: str, scopes: Iterable[str]) -> None:
        """Define or redefine a role in this process; keys that have it change at once.

        Roles are configuration (``APIKEYS_ROLES``): give every worker the same definitions.
        """
        checked = validation.check_fields(
            {"roles": {name: scopes}}, {"roles": lambda value: config_roles(value)}
        )["roles"]
        self.store.role_definitions.update(checked)
        self.store.cache.clear()

    def revoke_key(
        self,
        key_id: uuid.UUID | str,
        *,
        reason: str | None = None,
        revoked_by: str | None = None,
        organization: Organization | uuid.UUID | str | None = None,
    ) -> APIKey:
        """Revoke a key for good; it is refused from the next request on."""
        api_key = self.get_key(key_id, organization=organization)
        if api_key.revoked_at is not None:
            raise self._already_revoked(api_key)
        errors = {}
        if reason is not None and (
            not isinstance(reason, str) or len(reason) > 500 or unstorable_reason(reason)
        ):
            errors["reason"] = ["a text of at most 500 characters, without NUL"]
        if revoked_by is not None and (
            not isinstance(revoked_by, str)
            or len(revoked_by) > 320
            or unstorable_reason(revoked_by)
        ):
            errors["revoked_by"] = ["a text of at most 320 characters, without NUL"]
        if errors:
            raise InvalidInput(errors=errors)
        # One conditional UPDATE: of two revocations at once, the database lets one through.
        revocation = (
            sa.update(APIKey)
            .where(APIKey.id == api_key.id, APIKey.revoked_at.is_(None))
            .values(
                is_active=False, revoked_at=utcnow(), revoked_by=revoked_by, revoked_reason=reason
            )
            .execution_options(synchronize_session=False)
        )

        def revoke() -> None:
            if self.store.session.execute(revocation).rowcount != 1:  # type: ignore[attr-defined]
                raise AlreadyRevoked("The key was revoked by another request just now.")

        self.store.commit(revoke, api_key)
        self.store.cache.forget_key(api_key.id)
        self.store.notify("key.revoked", api_key=api_key, actor=revoked_by, reason=reason)
        return api_key

    def rotate_key(
        self,
        key_id: uuid.UUID | str,
        *,
        overlap_hours: float = 24,
        rotated_by: str | None = None,
        organization: Organization | uuid.UUID | str | None = None,
        granted_by: VerifiedKey | None = None,
    ) -> CreatedKey:
        """Replace a key with a new one that keeps its scopes, limits, metadata and lifetime.

        The old key keeps working for ``overlap_hours`` (0 ends it at once) so clients can
        switch without downtime. While it does, it counts toward the plan's key limit: at the
        limit, rotate with ``overlap_hours=0``. A key is rotated once: of two rotations at
        once, one succeeds and the other gets :class:`~flask_apikeys.errors.AlreadyRotated`.

        :param granted_by: the key asking (the admin API passes it): it must hold everything
            the successor will hold, see :meth:`create_key`.
        """
        old = self.get_key(key_id, organization=organization)
        if (
            isinstance(overlap_hours, bool)
            or not isinstance(overlap_hours, int | float)
            or not 0 <= overlap_hours <= 24 * 90
        ):
            raise InvalidInput(errors={"overlap_hours": ["a number of hours from 0 to 2160"]})
        if old.revoked_at is not None or not old.is_active:
            raise AlreadyRevoked("A revoked key cannot be rotated; create a new key instead.")
        if old.replaced_by_id is not None:
            raise AlreadyRotated(f"Key {old.id} was already rotated into {old.replaced_by_id}.")
        now = utcnow()
        if old.expires_at is not None and old.expires_at <= now:
            raise ExpiredAPIKey("An expired key cannot be rotated; create a new key instead.")
        lifetime = None if old.expires_at is None else old.expires_at - old.created_at
        if lifetime is not None:
            # A key stored before expiries were bounded (or written to the table directly) may
            # expire in year 9999: keep the new key's expiry within the calendar.
            lifetime = min(lifetime, validation.MAX_LIFETIME)
        values = {
            "name": old.name,
            "description": old.description,
            "environment": old.environment,
            "scopes": list(old.scopes or []),
            "roles": list(old.roles or []),
            "level": old.level,
            "allowed_networks": list(old.allowed_networks or []),
            "custom_rate_limit": old.custom_rate_limit,
            "key_metadata": dict(old.key_metadata or {}),
            "expires_at": None if lifetime is None else now + lifetime,
        }
        self.grants.refuse_escalation(old.organization, values, granted_by)
        overlap_end = now + timedelta(hours=overlap_hours)
        old_expires_at = old.expires_at
        if old_expires_at is None or overlap_end < old_expires_at:
            old_expires_at = overlap_end
        created = self._insert_key(old.organization, values, replacing=(old, old_expires_at))
        self.store.cache.forget_key(old.id)
        self.store.notify(
            "key.rotated",
            api_key=created.api_key,
            previous=old,
            actor=rotated_by,
            overlap_hours=overlap_hours,
        )
        return created

    def seed(self) -> tuple[Organization, CreatedKey | None]:
        """Create "Default Organization" and a "Default Test Key" with scope ``*``, once.

        Returns the organization and the new key, or ``None`` for the key when one already
        exists (its secret cannot be shown again; rotate it to get a new one).
        """
        organization = self.organizations.find_by_slug(DEFAULT_ORGANIZATION_SLUG)
        if organization is None:
            organization = self.organizations.create_organization(
                "Default Organization", "admin@example.com", "free", slug=DEFAULT_ORGANIZATION_SLUG
            )
        existing = self.store.read(
            lambda: self.store.session.scalars(
                sa.select(APIKey).where(
                    APIKey.organization_id == organization.id,
                    APIKey.name == DEFAULT_KEY_NAME,
                    APIKey.revoked_at.is_(None),
                )
            ).first()
        )
        if existing is not None:
            return organization, None
        return organization, self.create_key(
            organization, DEFAULT_KEY_NAME, "test", ["*"], actor="seed"
        )

    # -- helpers ------------------------------------------------------------------------------

    def _insert_key(
        self,
        organization: Organization,
        values: dict[str, Any],
        *,
        replacing: tuple[APIKey, datetime | None] | None = None,
    ) -> CreatedKey:
        """Store a new key (replacing ``(old key, its new expiry)`` in a rotation).

        Everything happens under the organization's lock row, and the plan's key count is
        checked after the write, counting every key that still authenticates (keys inside a
        rotation overlap too): the database, not a check before the write, keeps the limit.
        """
        full_key = keys.generate_key(self.store.settings.key_prefix, values["environment"])
        parsed = keys.parse_key(full_key)
        if parsed is None:  # pragma: no cover - a key we just generated always parses
            raise RuntimeError("generated a key that does not parse; this is a bug")
        api_key = APIKey(
            id=uuid.uuid4(),
            organization_id=organization.id,
            key_prefix=parsed.display_prefix,
            key_hash=self.store.hasher.hash(full_key),
            key_hint=keys.key_hint(full_key),
            **values,
        )

        def write() -> None:
            self.organizations.lock(organization)
            self.store.session.add(api_key)
            self.store.session.flush()
            if replacing is not None:
                old, old_expires_at = replacing
                # Conditional: of two rotations of one key at once, one finds it unrotated.
                replaced = self.store.session.execute(
                    sa.update(APIKey)
                    .where(
                        APIKey.id == old.id,
                        APIKey.replaced_by_id.is_(None),
                        APIKey.revoked_at.is_(None),
                        APIKey.is_active.is_(True),
                    )
                    .values(replaced_by_id=api_key.id, expires_at=old_expires_at)
                    .execution_options(synchronize_session=False)
                )
                if replaced.rowcount != 1:  # type: ignore[attr-defined]
                    raise AlreadyRotated(
                        f"Key {old.id} was rotated or revoked by another request just now."
                    )
            self.organizations.check_key_count(organization)

        self.store.commit(write, api_key, *([replacing[0]] if replacing is not None else []))
        return CreatedKey(key=full_key, api_key=api_key)

    def _key_checkers(self) -> dict[str, validation.Checker]:
        return validation.key_checkers(self.store.role_definitions)

    @staticmethod
    def _key_columns(values: dict[str, Any]) -> dict[str, Any]:
        """Checked key fields under their column names."""
        renames = {
            "rate_limit": "custom_rate_limit",
            "metadata": "key_metadata",
            "expires_in_days": "expires_at",
        }
        return {renames.get(field, field): value for field, value in values.items()}

    @staticmethod
    def _already_revoked(api_key: APIKey) -> AlreadyRevoked:
        revoked_at = api_key.revoked_at.isoformat() if api_key.revoked_at else "an earlier time"
        return AlreadyRevoked(f"Key {api_key.id} was revoked at {revoked_at}; revocation is final.")
