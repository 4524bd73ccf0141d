"""Organizations, and the transaction plumbing every service method shares.

:class:`OrganizationService` is the base of :class:`~flask_apikeys.service.KeyService`: it owns
the session, the read/commit helpers that turn database failures into 503s and roll back
refused changes, the event signals (:mod:`~flask_apikeys.signals`), and the organization
methods.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from . import signals, validation
from .cache import VerifiedKeyCache
from .config import Plan, Settings
from .errors import BackendUnavailable, InvalidInput, OrganizationNotFound
from .hashing import KeyHasher
from .models import APIKey, Organization, utcnow
from .permissions import effective_scopes, scopes_beyond
from .policies import requests_per_minute_allowed
from .storable import MAX_INTEGER

Result = TypeVar("Result")
#: Organization fields that change what its keys may hold: a change is checked for excess.
PLAN_FIELDS = frozenset({"plan", "rate_limit_per_minute", "max_api_keys"})
#: Refusals of a *value* (by the database, or by the driver while binding it): the caller's
#: input is at fault, so a 422, not the 503 of a database that cannot be reached. Validation
#: refuses such values first; this is the net under it.
UNSTORABLE_ERRORS = (DataError, UnicodeError, OverflowError)


def slugify(name: str) -> str:
    """``"Acme Corp."`` → ``"acme-corp"``."""
    return "-".join(re.findall(r"[a-z0-9]+", name.lower()))[:100] or "org"


class OrganizationService:
    """Organizations: create, read, update, and their effective limits."""

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
        #: Role name → scopes; starts from ``APIKEYS_ROLES``, changed by :meth:`define_role`.
        self.role_definitions: dict[str, tuple[str, ...]] = dict(settings.roles)

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
        given = {
            "name": name,
            "email": email,
            "plan": plan,
            "is_active": is_active,
            "monthly_request_limit": monthly_request_limit,
            "rate_limit_per_minute": rate_limit_per_minute,
            "max_api_keys": max_api_keys,
        }
        checkers = validation.organization_checkers(self.settings.plans)
        if slug is not None:
            given["slug"] = slug
            checkers["slug"] = validation.slug
        values = validation.check_fields(given, checkers)
        slug = values.pop("slug", None)
        if slug is not None:
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
        values = validation.check_fields(
            changes, validation.organization_checkers(self.settings.plans)
        )
        changed = {
            field: value for field, value in values.items() if getattr(organization, field) != value
        }
        for field, value in changed.items():
            setattr(organization, field, value)
        self._commit(lambda: None, organization)
        self.cache.forget_organization(organization.id)
        if changed:
            flagged: dict[str, Any] = {}
            if PLAN_FIELDS & changed.keys():
                flagged = {"plan_excess": self.plan_excess(organization)}
            self._notify(
                "organization.updated",
                organization=organization,
                actor=actor,
                changes=sorted(changed),
                **flagged,
            )
        return organization

    def plan_excess(self, organization: Organization | uuid.UUID | str) -> dict[str, Any]:
        """What the organization's keys hold beyond its plan, e.g. after a downgrade.

        ``keys``: each working key with scopes the plan does not allow (requests never get
        them: verification keeps only what the plan allows) or a rate limit above the plan's;
        ``working_keys`` and ``max_keys`` when more keys work than the plan allows (no new key
        or overlapping rotation is accepted until enough are revoked). Empty when nothing is.
        """
        organization = self.get_organization(organization)
        plan = self.plan_of(organization)
        now = utcnow()
        working = self._read(
            lambda: list(
                self.session.scalars(
                    sa.select(APIKey)
                    .where(
                        APIKey.organization_id == organization.id,
                        APIKey.revoked_at.is_(None),
                        APIKey.is_active.is_(True),
                        sa.or_(APIKey.expires_at.is_(None), APIKey.expires_at > now),
                    )
                    .order_by(APIKey.created_at, APIKey.id)
                )
            )
        )
        plan_limit = (
            None if plan.requests_per_minute is None else f"{plan.requests_per_minute}/minute"
        )
        flagged_keys = []
        for api_key in working:
            held = effective_scopes(
                api_key.scopes or (), api_key.roles or (), api_key.level, self.role_definitions
            )
            scopes = [] if plan.scopes is None else scopes_beyond(plan.scopes, held)
            rate_limit = api_key.custom_rate_limit
            above_plan = rate_limit is not None and requests_per_minute_allowed(
                rate_limit
            ) > requests_per_minute_allowed(plan_limit)
            if scopes or above_plan:
                flagged_keys.append(
                    {
                        "id": str(api_key.id),
                        "name": api_key.name,
                        "scopes_beyond_plan": scopes,
                        "rate_limit_beyond_plan": rate_limit if above_plan else None,
                    }
                )
        excess: dict[str, Any] = {}
        if flagged_keys:
            excess["keys"] = flagged_keys
        if plan.max_keys is not None and len(working) > plan.max_keys:
            excess.update(working_keys=len(working), max_keys=plan.max_keys)
        return excess

    def get_organization(self, reference: Organization | uuid.UUID | str) -> Organization:
        """Find an organization by object, id or slug; raise ``OrganizationNotFound``."""
        if isinstance(reference, Organization):
            if reference in self.session:
                return reference
            identity = sa.inspect(reference).identity  # an object from an earlier session
            reference = identity[0] if identity else reference.id
        organization = None
        identifier = as_uuid(reference)
        if identifier is not None:
            organization = self._read(lambda: self.session.get(Organization, identifier))
        elif isinstance(reference, str) and validation.SLUG_PATTERN.fullmatch(reference):
            # Only what can be a slug reaches the database: a URL's text may hold anything.
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
            scopes=plan.scopes,
        )

    # -- plumbing -------------------------------------------------------------------------------

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
        if not (1 <= limit <= 500) or not 0 <= offset <= MAX_INTEGER:
            raise InvalidInput(errors={"limit": ["1 to 500"], "offset": [f"0 to {MAX_INTEGER}"]})
        total_query = sa.select(sa.func.count()).select_from(query.order_by(None).subquery())
        items = self._read(lambda: list(self.session.scalars(query.limit(limit).offset(offset))))
        total = self._read(lambda: self.session.scalar(total_query)) or 0
        return items, total

    def _read(self, operation: Callable[[], Result]) -> Result:
        """Run a query; a database that cannot be reached becomes a 503, never a pass."""
        try:
            return operation()
        except UNSTORABLE_ERRORS as error:
            self.session.rollback()
            raise InvalidInput(
                "The database cannot take a value of this request; nothing was read."
            ) from error
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
        except UNSTORABLE_ERRORS as error:
            # A value the database refuses is the input's fault, never an outage (not a 503).
            self.session.rollback()
            raise InvalidInput(
                "The database cannot store a value of this change; nothing was saved."
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
        """Send the event's signal (:mod:`flask_apikeys.signals`); the audit trail hears it."""
        signals.send_service_event(event, **details)


def as_uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None
