"""Organizations: create, read, update, and their effective limits (plan and overrides)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import sqlalchemy as sa

from ..config import Plan
from ..errors import InvalidInput, KeyLimitReached, OrganizationNotFound
from ..limiting.policies import requests_per_minute_allowed
from ..logmask import mask_secrets
from ..models import APIKey, Organization, utcnow
from ..permissions import effective_scopes, scopes_beyond
from . import validation
from .store import Store

#: Organization fields that change what its keys may hold: a change is checked for excess.
PLAN_FIELDS = frozenset({"plan", "rate_limit_per_minute", "max_api_keys"})


def slugify(name: str) -> str:
    """``"Acme Corp."`` → ``"acme-corp"``."""
    return "-".join(re.findall(r"[a-z0-9]+", name.lower()))[:100] or "org"


class Organizations:
    """Organizations: create, read, update, and their effective limits."""

    def __init__(self, store: Store) -> None:
        self.store = store

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
        checkers = validation.organization_checkers(self.store.settings.plans)
        if slug is not None:
            given["slug"] = slug
            checkers["slug"] = validation.slug
        values = validation.check_fields(given, checkers)
        slug = values.pop("slug", None)
        if slug is not None:
            if self.find_by_slug(slug) is not None:
                raise InvalidInput(errors={"slug": [f"{slug!r} is already taken"]})
        else:
            slug = self._free_slug(slugify(values["name"]))
        organization = Organization(slug=slug, **values)
        self.store.commit(lambda: self.store.session.add(organization), organization)
        self.store.notify("organization.created", organization=organization, actor=actor)
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
            changes, validation.organization_checkers(self.store.settings.plans)
        )
        changed = {
            field: value for field, value in values.items() if getattr(organization, field) != value
        }
        for field, value in changed.items():
            setattr(organization, field, value)
        self.store.commit(lambda: None, organization)
        self.store.cache.forget_organization(organization.id)
        if changed:
            flagged: dict[str, Any] = {}
            if PLAN_FIELDS & changed.keys():
                flagged = {"plan_excess": self.plan_excess(organization)}
            self.store.notify(
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
        working = self.store.read(
            lambda: list(
                self.store.session.scalars(
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
                api_key.scopes or (),
                api_key.roles or (),
                api_key.level,
                self.store.role_definitions,
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
            if reference in self.store.session:
                return reference
            identity = sa.inspect(reference).identity  # an object from an earlier session
            reference = identity[0] if identity else reference.id
        organization = None
        identifier = as_uuid(reference)
        if identifier is not None:
            organization = self.store.read(lambda: self.store.session.get(Organization, identifier))
        elif isinstance(reference, str) and validation.SLUG_PATTERN.fullmatch(reference):
            # Only what can be a slug reaches the database: a URL's text may hold anything.
            organization = self.find_by_slug(reference)
        if organization is None:
            raise OrganizationNotFound(f"No organization {mask_secrets(repr(str(reference)))}.")
        return organization

    def list_organizations(
        self, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[Organization], int]:
        """A page of organizations, oldest first, and how many there are in all."""
        query = sa.select(Organization).order_by(Organization.created_at, Organization.id)
        return self.store.page(query, limit, offset)

    def plan_of(self, organization: Organization) -> Plan:
        """The organization's effective limits: its overrides, else its plan's."""
        plan = self.store.settings.plans.get(organization.plan) or Plan(
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

    def lock(self, organization: Organization) -> None:
        """Take the organization's row lock for the rest of the transaction.

        An UPDATE that changes nothing: on PostgreSQL it locks the row (as SELECT ... FOR
        UPDATE would); on SQLite it opens the write transaction at once, so no other writer
        can commit between the count and the insert.
        """
        self.store.session.execute(
            sa.update(Organization)
            .where(Organization.id == organization.id)
            .values(updated_at=Organization.updated_at)
            .execution_options(synchronize_session=False)
        )

    def authenticating_key_count(self, organization: Organization) -> int:
        """How many of the organization's keys authenticate now (rotation overlaps included)."""
        now = utcnow()
        authenticating = (
            APIKey.organization_id == organization.id,
            APIKey.revoked_at.is_(None),
            APIKey.is_active.is_(True),
            sa.or_(APIKey.expires_at.is_(None), APIKey.expires_at > now),
        )
        session = self.store.session
        if session.connection().dialect.name in {"mysql", "mariadb"}:
            # Under MySQL's REPEATABLE READ a plain SELECT reads the snapshot the transaction
            # took at its first read, before the lock; a locking read sees what other
            # transactions committed since. (PostgreSQL refuses FOR SHARE with an aggregate.)
            locked = sa.select(APIKey.id).where(*authenticating).with_for_update(read=True)
            return len(session.scalars(locked).all())
        return int(session.scalar(sa.select(sa.func.count(APIKey.id)).where(*authenticating)) or 0)

    def check_key_count(self, organization: Organization) -> None:
        """Raise if the organization now has more authenticating keys than its plan allows.

        Called under the organization's lock (:meth:`lock`): its plan is read again there, so
        that a downgrade committed since the organization was loaded is the limit checked.
        """
        self.store.session.refresh(organization, ["plan", "max_api_keys"], with_for_update=True)
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

    # -- plumbing -------------------------------------------------------------------------------

    def find_by_slug(self, slug: str) -> Organization | None:
        """The organization with this slug, or ``None``."""
        query = sa.select(Organization).where(Organization.slug == slug)
        return self.store.read(lambda: self.store.session.scalars(query).first())

    def _free_slug(self, base: str) -> str:
        taken = set(
            self.store.read(
                lambda: self.store.session.scalars(
                    sa.select(Organization.slug).where(
                        sa.or_(Organization.slug == base, Organization.slug.like(f"{base}-%"))
                    )
                ).all()
            )
        )
        if base not in taken:
            return base
        return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)


def as_uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None
