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

from .. import keys
from ..config import parse_roles as config_roles
from ..errors import (
    AlreadyRevoked,
    AlreadyRotated,
    APIKeyNotFound,
    ExpiredAPIKey,
    InsufficientScope,
    InvalidInput,
    KeyLimitReached,
)
from ..identity import VerifiedKey
from ..limiting.policies import per_minute, requests_per_minute_allowed
from ..models import APIKey, Organization, utcnow
from ..network import networks_beyond
from ..permissions import effective_scopes, scopes_beyond, within_plan
from ..storable import unstorable_reason
from ..usage import stats
from . import validation
from .organizations import as_uuid
from .verification import KeyVerification

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
        :param granted_by: the key asking for this one (the admin API passes it). The new key
            may hold nothing that ``granted_by`` does not: no scope (its level's and roles'
            included), no later expiry, no higher rate limit, no network outside its own; a
            revoked key, or one replaced in a rotation, grants nothing. ``None`` (the CLI, the
            bootstrap key, Python code) is trusted.
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
        created = self._insert_key(organization, values)
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
        current = {field: getattr(api_key, field) for field in GRANTED_FIELDS}
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
            if self.session.execute(revocation).rowcount != 1:  # type: ignore[attr-defined]
                raise AlreadyRevoked("The key was revoked by another request just now.")

        self._commit(revoke, api_key)
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
        self._refuse_escalation(old.organization, values, granted_by)
        overlap_end = now + timedelta(hours=overlap_hours)
        old_expires_at = old.expires_at
        if old_expires_at is None or overlap_end < old_expires_at:
            old_expires_at = overlap_end
        created = self._insert_key(old.organization, values, replacing=(old, old_expires_at))
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
        replacing: tuple[APIKey, datetime | None] | None = None,
    ) -> CreatedKey:
        """Store a new key (replacing ``(old key, its new expiry)`` in a rotation).

        Everything happens under the organization's lock row, and the plan's key count is
        checked after the write, counting every key that still authenticates (keys inside a
        rotation overlap too): the database, not a check before the write, keeps the limit.
        """
        full_key = keys.generate_key(self.settings.key_prefix, values["environment"])
        parsed = keys.parse_key(full_key)
        if parsed is None:  # pragma: no cover - a key we just generated always parses
            raise RuntimeError("generated a key that does not parse; this is a bug")
        api_key = APIKey(
            id=uuid.uuid4(),
            organization_id=organization.id,
            key_prefix=parsed.display_prefix,
            key_hash=self.hasher.hash(full_key),
            key_hint=keys.key_hint(full_key),
            **values,
        )

        def write() -> None:
            self._lock_organization(organization)
            self.session.add(api_key)
            self.session.flush()
            if replacing is not None:
                old, old_expires_at = replacing
                # Conditional: of two rotations of one key at once, one finds it unrotated.
                replaced = self.session.execute(
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
            self._check_key_count(organization)

        self._commit(write, api_key, *([replacing[0]] if replacing is not None else []))
        return CreatedKey(key=full_key, api_key=api_key)

    def _lock_organization(self, organization: Organization) -> None:
        """Take the organization's row lock for the rest of the transaction.

        An UPDATE that changes nothing: on PostgreSQL it locks the row (as SELECT ... FOR
        UPDATE would); on SQLite it opens the write transaction at once, so no other writer
        can commit between the count and the insert.
        """
        self.session.execute(
            sa.update(Organization)
            .where(Organization.id == organization.id)
            .values(updated_at=Organization.updated_at)
            .execution_options(synchronize_session=False)
        )

    def authenticating_key_count(self, organization: Organization) -> int:
        """How many of the organization's keys authenticate now (rotation overlaps included)."""
        now = utcnow()
        return int(
            self.session.scalar(
                sa.select(sa.func.count(APIKey.id)).where(
                    APIKey.organization_id == organization.id,
                    APIKey.revoked_at.is_(None),
                    APIKey.is_active.is_(True),
                    sa.or_(APIKey.expires_at.is_(None), APIKey.expires_at > now),
                )
            )
            or 0
        )

    def _check_key_count(self, organization: Organization) -> None:
        """Raise if the organization now has more authenticating keys than its plan allows."""
        maximum = self.plan_of(organization).max_keys
        if maximum is None:
            return
        active = self.authenticating_key_count(organization)
        if active > maximum:
            raise KeyLimitReached(
                f"Organization {organization.slug!r}: plan {organization.plan!r} allows {maximum} "
                "working keys, keys inside a rotation overlap included, and this would make "
                f"{active}. Revoke a key, or rotate with overlap_hours=0."
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

    @staticmethod
    def _already_revoked(api_key: APIKey) -> AlreadyRevoked:
        revoked_at = api_key.revoked_at.isoformat() if api_key.revoked_at else "an earlier time"
        return AlreadyRevoked(f"Key {api_key.id} was revoked at {revoked_at}; revocation is final.")

    def _refuse_escalation(
        self, organization: Organization, values: dict[str, Any], granted_by: VerifiedKey | None
    ) -> None:
        """Nobody gets more than they hold: refuse (403) a resulting key beyond its plan's
        scopes, or beyond anything its granter holds (see :meth:`create_key`)."""
        requested = effective_scopes(
            values.get("scopes") or (),
            values.get("roles") or (),
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
        if granted_by is None:
            return
        # The granter's row as it is now, not its cached snapshot: a key revoked, narrowed or
        # rotated a moment ago (in another process too) grants no more than it has left.
        granter = self._read(
            lambda: self.session.get(APIKey, granted_by.id, populate_existing=True)
        )
        if granter is None or granter.revoked_at is not None or not granter.is_active:
            raise InsufficientScope("A revoked key cannot grant anything.")
        if granter.replaced_by_id is not None:
            raise InsufficientScope(
                "A key replaced in a rotation works only until its overlap ends: it may not "
                "create, rotate or change keys. Use the key that replaced it."
            )
        held_now = effective_scopes(
            granter.scopes or (), granter.roles or (), granter.level, self.role_definitions
        )
        beyond = sorted(
            set(scopes_beyond(granted_by.scopes, requested))
            | set(scopes_beyond(within_plan(held_now, plan_scopes), requested))
        )
        if beyond:
            raise InsufficientScope(
                f"A key cannot grant what it does not have: {', '.join(beyond)}.", beyond=beyond
            )
        expires_at = values.get("expires_at")
        if granter.expires_at is not None and (
            expires_at is None or expires_at > granter.expires_at
        ):
            raise InsufficientScope(
                "A key that expires cannot make or keep a key that outlives it "
                f"(it expires at {granter.expires_at.isoformat()}); "
                "an operator renews such keys with the CLI or the bootstrap key."
            )
        organization_limit = per_minute(
            self.plan_of(organization).requests_per_minute, self.settings.default_rate_limit
        )
        granted_limit = values.get("custom_rate_limit") or organization_limit
        held_limit = granter.custom_rate_limit or organization_limit
        if requests_per_minute_allowed(granted_limit) > requests_per_minute_allowed(held_limit):
            raise InsufficientScope(
                f"A key cannot grant a rate limit above its own ({held_limit}): "
                f"{granted_limit} allows more requests a minute."
            )
        networks = networks_beyond(
            granter.allowed_networks or (), values.get("allowed_networks") or ()
        )
        if networks:
            raise InsufficientScope(
                "A key cannot grant networks outside its own allowed_networks: "
                f"{', '.join(networks)}.",
                beyond_networks=networks,
            )
