"""Every business rule about keys, shared by the hook, the CLI and the admin API.

One :class:`KeyService` exists per app (in ``app.extensions["apikeys"]``). Methods validate all
of their input before writing anything, commit on success and roll back on failure, so a refused
call leaves the database as it was. Errors are the classes of :mod:`flask_apikeys.errors`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import keys, stats, validation
from .config import parse_roles as config_roles
from .errors import (
    AlreadyRevoked,
    AlreadyRotated,
    APIKeyNotFound,
    ExpiredAPIKey,
    InsufficientScope,
    InvalidInput,
    KeyLimitReached,
)
from .identity import VerifiedKey
from .models import APIKey, Organization, utcnow
from .organizations import as_uuid
from .permissions import effective_scopes, scopes_beyond
from .verification import KeyVerification

DEFAULT_ORGANIZATION_SLUG = "default"
DEFAULT_KEY_NAME = "Default Test Key"


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: ``key`` is the full secret, available here once and never again."""

    key: str
    api_key: APIKey

    def __repr__(self) -> str:
        # Never let the secret reach a log through repr().
        return f"<CreatedKey {self.api_key.key_prefix}…{self.api_key.key_hint}>"


class KeyService(KeyVerification):
    """Organizations and keys: create, read, update, revoke, rotate and verify."""

    # -- keys ---------------------------------------------------------------------------------

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
        :param granted_by: the key asking for this one (the admin API passes it): the new key
            may not get any scope that ``granted_by`` does not have itself.
        """
        organization = self.get_organization(organization)
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
        self._refuse_escalation(organization, values, granted_by)
        created = self._insert_key(organization, values, enforce_plan=True)
        self._notify("key.created", api_key=created.api_key, actor=actor)
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
        organization = self.get_organization(organization)
        query = sa.select(APIKey).where(APIKey.organization_id == organization.id)
        if not include_revoked:
            query = query.where(APIKey.revoked_at.is_(None))
        query = query.order_by(APIKey.created_at.desc(), APIKey.id)
        return self._page(query, APIKey, limit, offset)

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
            api_key = self._read(lambda: self.session.get(APIKey, identifier))
        if api_key is not None and organization is not None:
            if api_key.organization_id != self.get_organization(organization).id:
                api_key = None
        if api_key is None:
            raise APIKeyNotFound(f"No API key {str(key_id)!r}.")
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
        current = {
            "scopes": api_key.scopes,
            "roles": api_key.roles,
            "level": api_key.level,
        }
        self._refuse_escalation(api_key.organization, {**current, **values}, granted_by)
        changed = sorted(
            field for field, value in values.items() if getattr(api_key, field) != value
        )
        for field in changed:
            setattr(api_key, field, values[field])
        self._commit(lambda: None, api_key)
        self.cache.forget_key(api_key.id)
        if changed:
            self._notify("key.updated", api_key=api_key, actor=actor, changes=changed)
        return api_key

    def define_role(self, name: str, scopes: Iterable[str]) -> None:
        """Define or redefine a role in this process; keys that have it change at once.

        Roles are configuration (``APIKEYS_ROLES``): give every worker the same definitions.
        """
        checked = validation.check_fields(
            {"roles": {name: scopes}}, {"roles": lambda value: config_roles(value)}
        )["roles"]
        self.role_definitions.update(checked)
        self.cache.clear()

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
            raise AlreadyRevoked(
                f"Key {api_key.id} was revoked at {api_key.revoked_at.isoformat()}; "
                "revocation is final."
            )
        errors = {}
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            errors["reason"] = ["at most 500 characters"]
        if revoked_by is not None and (not isinstance(revoked_by, str) or len(revoked_by) > 320):
            errors["revoked_by"] = ["at most 320 characters"]
        if errors:
            raise InvalidInput(errors=errors)
        api_key.is_active = False
        api_key.revoked_at = utcnow()
        api_key.revoked_by = revoked_by
        api_key.revoked_reason = reason
        self._commit(lambda: None, api_key)
        self.cache.forget_key(api_key.id)
        self._notify("key.revoked", api_key=api_key, actor=revoked_by, reason=reason)
        return api_key

    def rotate_key(
        self,
        key_id: uuid.UUID | str,
        *,
        overlap_hours: float = 24,
        rotated_by: str | None = None,
        organization: Organization | uuid.UUID | str | None = None,
    ) -> CreatedKey:
        """Replace a key with a new one that keeps its scopes, limits, metadata and lifetime.

        The old key keeps working for ``overlap_hours`` (0 ends it at once) so clients can
        switch without downtime; rotation is allowed even when the plan's key count is reached.
        """
        old = self.get_key(key_id, organization=organization)
        if not isinstance(overlap_hours, int | float) or not 0 <= overlap_hours <= 24 * 90:
            raise InvalidInput(errors={"overlap_hours": ["a number of hours from 0 to 2160"]})
        if old.revoked_at is not None or not old.is_active:
            raise AlreadyRevoked("A revoked key cannot be rotated; create a new key instead.")
        if old.replaced_by_id is not None:
            raise AlreadyRotated(f"Key {old.id} was already rotated into {old.replaced_by_id}.")
        now = utcnow()
        if old.expires_at is not None and old.expires_at <= now:
            raise ExpiredAPIKey("An expired key cannot be rotated; create a new key instead.")
        lifetime = None if old.expires_at is None else old.expires_at - old.created_at
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
        overlap_end = now + timedelta(hours=overlap_hours)
        if old.expires_at is None or overlap_end < old.expires_at:
            old.expires_at = overlap_end
        created = self._insert_key(old.organization, values, enforce_plan=False, replacing=old)
        self.cache.forget_key(old.id)
        self._notify(
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
        organization = self._find_organization_by_slug(DEFAULT_ORGANIZATION_SLUG)
        if organization is None:
            organization = self.create_organization(
                "Default Organization", "admin@example.com", "free", slug=DEFAULT_ORGANIZATION_SLUG
            )
        existing = self._read(
            lambda: self.session.scalars(
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

    # -- usage ---------------------------------------------------------------------------------

    def usage_stats(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        start: date,
        end: date,
        key: uuid.UUID | str | None = None,
    ) -> dict[str, Any]:
        """Usage between ``start`` and ``end`` (excluded): totals, by day/endpoint/status, p50/p95.

        With ``key``, only that key's (it must belong to the organization).
        """
        organization = self.get_organization(organization)
        key_id = None if key is None else self.get_key(key, organization=organization).id

        def read_now() -> dict[str, Any]:
            # On a connection of its own: the session's transaction may have begun before the
            # usage writer's last commit, and under REPEATABLE READ (MySQL, MariaDB) it would
            # not see those rows.
            with self.session.get_bind().engine.connect() as connection:
                return stats.usage_stats(
                    connection, organization.id, start=start, end=end, api_key_id=key_id
                )

        return self._read(read_now)

    def monthly_usage(
        self, organization: Organization | uuid.UUID | str, month: str
    ) -> dict[str, Any]:
        """Usage of one calendar month (UTC), e.g. ``"2026-01"``."""
        start, end = stats.month_bounds(month)
        return {"month": month, **self.usage_stats(organization, start=start, end=end)}

    # -- helpers ------------------------------------------------------------------------------

    def _insert_key(
        self,
        organization: Organization,
        values: dict[str, Any],
        *,
        enforce_plan: bool,
        replacing: APIKey | None = None,
    ) -> CreatedKey:
        full_key = keys.generate_key(self.settings.key_prefix, values["environment"])
        parsed = keys.parse_key(full_key)
        if parsed is None:  # pragma: no cover - a key we just generated always parses
            raise RuntimeError("generated a key that does not parse; this is a bug")
        api_key = APIKey(
            organization_id=organization.id,
            key_prefix=parsed.display_prefix,
            key_hash=self.hasher.hash(full_key),
            key_hint=keys.key_hint(full_key),
            **values,
        )

        def write() -> None:
            if enforce_plan:
                self._check_key_count(organization)
            self.session.add(api_key)
            if replacing is not None:
                self.session.flush()
                replacing.replaced_by_id = api_key.id

        self._commit(write, api_key, *([replacing] if replacing is not None else []))
        return CreatedKey(key=full_key, api_key=api_key)

    def _check_key_count(self, organization: Organization) -> None:
        # Lock the organization row (PostgreSQL) so two concurrent creations cannot both pass.
        self.session.execute(
            sa.select(Organization.id).where(Organization.id == organization.id).with_for_update()
        )
        maximum = self.plan_of(organization).max_keys
        if maximum is None:
            return
        now = utcnow()
        active = self.session.scalar(
            sa.select(sa.func.count(APIKey.id)).where(
                APIKey.organization_id == organization.id,
                APIKey.revoked_at.is_(None),
                APIKey.is_active.is_(True),
                sa.or_(APIKey.expires_at.is_(None), APIKey.expires_at > now),
            )
        )
        if (active or 0) >= maximum:
            raise KeyLimitReached(
                f"Organization {organization.slug!r} has {active} active keys; its plan "
                f"{organization.plan!r} allows {maximum}. Revoke a key or change the plan."
            )

    def _key_checkers(self) -> dict[str, validation.Checker]:
        return validation.key_checkers(self.role_definitions)

    @staticmethod
    def _key_columns(values: dict[str, Any]) -> dict[str, Any]:
        """Checked key fields under their column names."""
        renames = {
            "rate_limit": "custom_rate_limit",
            "metadata": "key_metadata",
            "expires_in_days": "expires_at",
        }
        return {renames.get(field, field): value for field, value in values.items()}

    def _refuse_escalation(
        self, organization: Organization, values: dict[str, Any], granted_by: VerifiedKey | None
    ) -> None:
        """A key may not get scopes beyond its organization's plan, nor beyond its granter's."""
        requested = effective_scopes(
            values.get("scopes", ()),
            values.get("roles", ()),
            values.get("level"),
            self.role_definitions,
        )
        plan_scopes = self.plan_of(organization).scopes
        beyond_plan = [] if plan_scopes is None else scopes_beyond(plan_scopes, requested)
        if beyond_plan:
            raise InsufficientScope(
                f"Plan {organization.plan!r} does not allow: {', '.join(beyond_plan)}.",
                beyond=beyond_plan,
            )
        if granted_by is not None:
            beyond_granter = scopes_beyond(granted_by.scopes, requested)
            if beyond_granter:
                raise InsufficientScope(
                    f"A key cannot grant what it does not have: {', '.join(beyond_granter)}.",
                    beyond=beyond_granter,
                )
