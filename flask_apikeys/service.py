"""Every business rule about organizations and keys, shared by the hook, the CLI and the admin API.

One :class:`KeyService` exists per app (in ``app.extensions["apikeys"]``). Methods validate all
of their input before writing anything, commit on success and roll back on failure, so a refused
call leaves the database as it was. Errors are the classes of :mod:`flask_apikeys.errors`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar

import sqlalchemy as sa
from limits import parse_many
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, undefer

from . import keys
from .cache import VerifiedKeyCache
from .config import Plan, Settings
from .errors import (
    AlreadyRevoked,
    AlreadyRotated,
    APIKeyNotFound,
    BackendUnavailable,
    ExpiredAPIKey,
    InvalidAPIKey,
    InvalidInput,
    KeyLimitReached,
    OrganizationInactive,
    OrganizationNotFound,
    RevokedAPIKey,
)
from .hashing import KeyHasher, cache_digest
from .identity import OrganizationInfo, VerifiedKey
from .models import APIKey, Organization, utcnow
from .scopes import normalize_scopes

EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
SLUG_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_METADATA_BYTES = 4096
DEFAULT_ORGANIZATION_SLUG = "default"
DEFAULT_KEY_NAME = "Default Test Key"
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: ``key`` is the full secret, available here once and never again."""

    key: str
    api_key: APIKey

    def __repr__(self) -> str:
        # Never let the secret reach a log through repr().
        return f"<CreatedKey {self.api_key.key_prefix}…{self.api_key.key_hint}>"


def slugify(name: str) -> str:
    """``"Acme Corp."`` → ``"acme-corp"``."""
    return "-".join(re.findall(r"[a-z0-9]+", name.lower()))[:100] or "org"


class KeyService:
    """Organizations and keys: create, read, update, revoke, rotate and verify."""

    def __init__(
        self,
        *,
        session: Callable[[], Session],
        settings: Settings,
        hasher: KeyHasher,
        cache: VerifiedKeyCache,
    ) -> None:
        self._session = session
        self.settings = settings
        self.hasher = hasher
        self.cache = cache
        #: Called with ``(event, **details)`` after each change; the audit trail plugs in here.
        self.listeners: list[Callable[..., None]] = []

    @property
    def session(self) -> Session:
        return self._session()

    # -- organizations ------------------------------------------------------------------------

    def create_organization(
        self,
        name: str,
        email: str,
        plan: str = "free",
        *,
        slug: str | None = None,
        is_active: bool = True,
        monthly_request_limit: int | None = None,
        rate_limit_per_minute: int | None = None,
        max_api_keys: int | None = None,
        actor: str | None = None,
    ) -> Organization:
        """Create an organization; its slug comes from the name unless given."""
        values = self._check_organization_fields(
            name=name,
            email=email,
            plan=plan,
            is_active=is_active,
            monthly_request_limit=monthly_request_limit,
            rate_limit_per_minute=rate_limit_per_minute,
            max_api_keys=max_api_keys,
        )
        if slug is not None:
            if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug) or len(slug) > 100:
                raise InvalidInput(errors={"slug": ["use lowercase letters, digits and '-'"]})
            if self._find_organization_by_slug(slug) is not None:
                raise InvalidInput(errors={"slug": [f"{slug!r} is already taken"]})
        else:
            slug = self._free_slug(slugify(values["name"]))
        organization = Organization(slug=slug, **values)
        self._commit(lambda: self.session.add(organization), organization)
        self._notify("organization.created", organization=organization, actor=actor)
        return organization

    def update_organization(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        actor: str | None = None,
        **changes: Any,
    ) -> Organization:
        """Change an organization's name, email, plan, state or limit overrides."""
        organization = self.get_organization(organization)
        allowed = {
            "name",
            "email",
            "plan",
            "is_active",
            "monthly_request_limit",
            "rate_limit_per_minute",
            "max_api_keys",
        }
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise InvalidInput(errors={field: ["unknown field"] for field in unknown})
        current = {field: getattr(organization, field) for field in allowed}
        values = self._check_organization_fields(**{**current, **changes})
        changed = {field: values[field] for field in changes if values[field] != current[field]}
        for field, value in changed.items():
            setattr(organization, field, value)
        self._commit(lambda: None, organization)
        self.cache.forget_organization(organization.id)
        if changed:
            self._notify(
                "organization.updated",
                organization=organization,
                actor=actor,
                changes=sorted(changed),
            )
        return organization

    def get_organization(self, reference: Organization | uuid.UUID | str) -> Organization:
        """Find an organization by object, id or slug; raise ``OrganizationNotFound``."""
        if isinstance(reference, Organization):
            if reference in self.session:
                return reference
            identity = sa.inspect(reference).identity  # an object from an earlier session
            reference = identity[0] if identity else reference.id
        organization = None
        identifier = _as_uuid(reference)
        if identifier is not None:
            organization = self._read(lambda: self.session.get(Organization, identifier))
        elif isinstance(reference, str):
            organization = self._find_organization_by_slug(reference)
        if organization is None:
            raise OrganizationNotFound(f"No organization {str(reference)!r}.")
        return organization

    def list_organizations(
        self, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[Organization], int]:
        """A page of organizations, oldest first, and how many there are in all."""
        query = sa.select(Organization).order_by(Organization.created_at, Organization.id)
        return self._page(query, Organization, limit, offset)

    def plan_of(self, organization: Organization) -> Plan:
        """The organization's effective limits: its overrides, else its plan's."""
        plan = self.settings.plans.get(organization.plan) or Plan(
            organization.plan, None, None, None
        )

        def pick(override: int | None, default: int | None) -> int | None:
            return default if override is None else override

        return Plan(
            name=plan.name,
            requests_per_minute=pick(organization.rate_limit_per_minute, plan.requests_per_minute),
            monthly_requests=pick(organization.monthly_request_limit, plan.monthly_requests),
            max_keys=pick(organization.max_api_keys, plan.max_keys),
        )

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
        actor: str | None = None,
    ) -> CreatedKey:
        """Create a key; the returned :class:`CreatedKey` holds the full key, this once."""
        organization = self.get_organization(organization)
        values = self._check_key_fields(
            name=name,
            environment=environment,
            scopes=scopes,
            description=description,
            expires_in_days=expires_in_days,
            expires_at=expires_at,
            rate_limit=rate_limit,
            metadata=metadata,
        )
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
        identifier = _as_uuid(key_id)
        api_key = None
        if identifier is not None:
            api_key = self._read(lambda: self.session.get(APIKey, identifier))
        if api_key is not None and organization is not None:
            if api_key.organization_id != self.get_organization(organization).id:
                api_key = None
        if api_key is None:
            raise APIKeyNotFound(f"No API key {str(key_id)!r}.")
        return api_key

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

    # -- verification -------------------------------------------------------------------------

    def verify_key(self, presented: str) -> VerifiedKey:
        """Authenticate a presented key, or raise the error that says why not.

        Order matters: the format and checksum first (no I/O), then the cache or one indexed
        query, the hash compared in constant time, and only then the key's state.
        """
        if keys.parse_key(presented, self.settings.key_prefix) is None:
            raise InvalidAPIKey("The API key is malformed.")
        digest = cache_digest(presented)
        verified = self.cache.get(digest)
        if verified is None:
            verified = self._load_verified_key(presented)
            self.cache.put(digest, verified)
        self.check_usable(verified)
        return verified

    def check_usable(self, verified: VerifiedKey) -> None:
        """Raise if a verified key may not be used now: revoked, expired, organization off."""
        if verified.revoked_at is not None or not verified.is_active:
            raise RevokedAPIKey("This API key has been revoked.")
        if verified.is_expired():
            raise ExpiredAPIKey("This API key has expired.")
        if not verified.organization.is_active:
            raise OrganizationInactive("The organization that owns this API key is inactive.")

    def _load_verified_key(self, presented: str) -> VerifiedKey:
        candidates = self.hasher.lookup_candidates(presented)
        query = (
            sa.select(APIKey, Organization)
            .join(Organization, APIKey.organization_id == Organization.id)
            .where(APIKey.key_hash.in_(candidates))
            .options(undefer(APIKey.key_hash))
        )
        row = self._read(lambda: self.session.execute(query).first())
        if row is None or not self.hasher.verify(presented, row[0].key_hash):
            raise InvalidAPIKey("The API key is not recognised.")
        api_key, organization = row
        if self.hasher.needs_rehash(api_key.key_hash):
            api_key.key_hash = self.hasher.hash(presented)
            self._commit(lambda: None)
        return self.snapshot(api_key, organization)

    def snapshot(self, api_key: APIKey, organization: Organization) -> VerifiedKey:
        """The immutable view of a key that requests see as ``current_key``."""
        plan = self.plan_of(organization)
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
            scopes=frozenset(api_key.scopes or ()),
            metadata=MappingProxyType(dict(api_key.key_metadata or {})),
            custom_rate_limit=api_key.custom_rate_limit,
            expires_at=expires_at,
            revoked_at=api_key.revoked_at,
            is_active=api_key.is_active,
            expires_at_timestamp=None if expires_at is None else expires_at.timestamp(),
        )

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

    def _check_organization_fields(self, **values: Any) -> dict[str, Any]:
        errors: dict[str, list[str]] = {}
        name = values["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            errors["name"] = ["a non-empty name of at most 200 characters"]
        else:
            values["name"] = name.strip()
        email = values["email"]
        if not isinstance(email, str) or len(email) > 320 or not EMAIL_PATTERN.fullmatch(email):
            errors["email"] = ["a valid email address"]
        if values["plan"] not in self.settings.plans:
            errors["plan"] = [f"one of: {', '.join(self.settings.plans)}"]
        if not isinstance(values["is_active"], bool):
            errors["is_active"] = ["true or false"]
        for field in ("monthly_request_limit", "rate_limit_per_minute", "max_api_keys"):
            number = values[field]
            if number is not None and (
                isinstance(number, bool) or not isinstance(number, int) or number < 0
            ):
                errors[field] = ["a whole number, 0 or more, or null for the plan's value"]
        if errors:
            raise InvalidInput(errors=errors)
        return values

    def _check_key_fields(
        self,
        *,
        name: Any,
        environment: Any,
        scopes: Any,
        description: Any,
        expires_in_days: Any,
        expires_at: Any,
        rate_limit: Any,
        metadata: Any,
    ) -> dict[str, Any]:
        errors: dict[str, list[str]] = {}
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            errors["name"] = ["a non-empty name of at most 200 characters"]
        if environment not in keys.ENVIRONMENTS:
            errors["environment"] = [f"one of: {', '.join(keys.ENVIRONMENTS)}"]
        try:
            scope_list = normalize_scopes(scopes)
        except ValueError as error:
            errors["scopes"] = [str(error)]
        if description is not None and (
            not isinstance(description, str) or len(description) > 2000
        ):
            errors["description"] = ["at most 2000 characters"]
        if expires_in_days is not None and expires_at is not None:
            errors["expires_at"] = ["give expires_in_days or expires_at, not both"]
        elif expires_in_days is not None:
            if (
                isinstance(expires_in_days, bool)
                or not isinstance(expires_in_days, int)
                or not (1 <= expires_in_days <= 3650)
            ):
                errors["expires_in_days"] = ["a whole number of days from 1 to 3650"]
            else:
                expires_at = utcnow() + timedelta(days=expires_in_days)
        elif expires_at is not None:
            if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
                errors["expires_at"] = ["a timezone-aware datetime"]
            elif expires_at <= utcnow():
                errors["expires_at"] = ["a time in the future"]
        if rate_limit is not None:
            try:
                if not isinstance(rate_limit, str) or not parse_many(rate_limit):
                    raise ValueError
            except ValueError:
                errors["rate_limit"] = ["a rate limit such as '100/minute' or '10/second;1000/day'"]
        if metadata is not None:
            if not isinstance(metadata, Mapping) or len(repr(metadata)) > MAX_METADATA_BYTES:
                errors["metadata"] = [f"a JSON object of at most {MAX_METADATA_BYTES} bytes"]
        if errors:
            raise InvalidInput(errors=errors)
        return {
            "name": name.strip(),
            "description": description,
            "environment": environment,
            "scopes": scope_list,
            "custom_rate_limit": rate_limit,
            "key_metadata": dict(metadata or {}),
            "expires_at": expires_at,
        }

    def _find_organization_by_slug(self, slug: str) -> Organization | None:
        query = sa.select(Organization).where(Organization.slug == slug)
        return self._read(lambda: self.session.scalars(query).first())

    def _free_slug(self, base: str) -> str:
        taken = set(
            self._read(
                lambda: self.session.scalars(
                    sa.select(Organization.slug).where(
                        sa.or_(Organization.slug == base, Organization.slug.like(f"{base}-%"))
                    )
                ).all()
            )
        )
        if base not in taken:
            return base
        return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)

    def _page(
        self, query: sa.Select[Any], model: type, limit: int, offset: int
    ) -> tuple[list[Any], int]:
        if not (1 <= limit <= 500) or offset < 0:
            raise InvalidInput(errors={"limit": ["1 to 500"], "offset": ["0 or more"]})
        total_query = sa.select(sa.func.count()).select_from(query.order_by(None).subquery())
        items = self._read(lambda: list(self.session.scalars(query.limit(limit).offset(offset))))
        total = self._read(lambda: self.session.scalar(total_query)) or 0
        return items, total

    def _read(self, operation: Callable[[], Result]) -> Result:
        """Run a query; a database that cannot be reached becomes a 503, never a pass."""
        try:
            return operation()
        except SQLAlchemyError as error:
            self.session.rollback()
            raise BackendUnavailable("The key database could not be reached; try again.") from error

    def _commit(self, operation: Callable[[], None], *refresh: object) -> None:
        """Run ``operation`` and commit, or roll everything back and re-raise.

        The ``refresh`` objects are reloaded after the commit so that callers can read them
        after the app context (and its session) has ended.
        """
        try:
            operation()
            self.session.commit()
            for instance in refresh:
                self.session.refresh(instance)
        except IntegrityError as error:
            self.session.rollback()
            raise InvalidInput(
                "The change conflicts with existing data; nothing was saved."
            ) from error
        except SQLAlchemyError as error:
            self.session.rollback()
            raise BackendUnavailable(
                "The key database refused the change; nothing was saved."
            ) from error
        except BaseException:
            self.session.rollback()
            raise

    def _notify(self, event: str, **details: Any) -> None:
        for listener in self.listeners:
            listener(event, **details)


def _as_uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None
