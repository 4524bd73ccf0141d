"""The service layer's one object per app: the parts it is made of, and their methods by name.

:class:`KeyService` builds the parts around one :class:`~.store.Store` and answers each
operation by handing it to the part that owns it; the admin API, the CLI and
:class:`~flask_apikeys.APIKeys` call it, the request path calls :attr:`KeyService.verification`
directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy.orm import Session

from ..cache import VerifiedKeyCache
from ..config import Plan, Settings
from ..hashing import KeyHasher
from ..identity import VerifiedKey
from ..models import APIKey, Organization
from .grants import Grants
from .lifecycle import CreatedKey, KeyLifecycle
from .organizations import Organizations
from .reports import UsageReports
from .retention import Retention
from .store import Store
from .verification import Verification


class KeyService:
    """Organizations and keys: create, read, update, revoke, rotate, verify and report usage.

    One per app (``app.extensions["apikeys"].service``). Every method validates all of its
    input before writing anything, commits on success and rolls back on failure, so a refused
    call leaves the database as it was; errors are the classes of :mod:`flask_apikeys.errors`.
    """

    def __init__(
        self,
        *,
        session: Callable[[], Session],
        settings: Settings,
        hasher: KeyHasher,
        cache: VerifiedKeyCache,
    ) -> None:
        #: Session, reads, commits, pages and events, shared by every part.
        self.store = Store(session=session, settings=settings, hasher=hasher, cache=cache)
        self.organizations = Organizations(self.store)
        self.grants = Grants(self.store, self.organizations)
        self.keys = KeyLifecycle(self.store, self.organizations, self.grants)
        self.verification = Verification(self.store, self.organizations)
        self.reports = UsageReports(self.store, self.organizations, self.keys)
        self.retention = Retention(self.store)

    @property
    def role_definitions(self) -> dict[str, tuple[str, ...]]:
        """Role name → scopes: ``APIKEYS_ROLES``, as :meth:`define_role` changed them."""
        return self.store.role_definitions

    # -- organizations ---------------------------------------------------------------------------

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
        """See :meth:`.Organizations.create_organization`."""
        return self.organizations.create_organization(
            name,
            email,
            plan,
            slug=slug,
            is_active=is_active,
            monthly_request_limit=monthly_request_limit,
            rate_limit_per_minute=rate_limit_per_minute,
            max_api_keys=max_api_keys,
            actor=actor,
        )

    def update_organization(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        actor: str | None = None,
        **changes: Any,
    ) -> Organization:
        """See :meth:`.Organizations.update_organization`."""
        return self.organizations.update_organization(organization, actor=actor, **changes)

    def get_organization(self, reference: Organization | uuid.UUID | str) -> Organization:
        """See :meth:`.Organizations.get_organization`."""
        return self.organizations.get_organization(reference)

    def list_organizations(
        self, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[Organization], int]:
        """See :meth:`.Organizations.list_organizations`."""
        return self.organizations.list_organizations(limit=limit, offset=offset)

    def plan_of(self, organization: Organization) -> Plan:
        """See :meth:`.Organizations.plan_of`."""
        return self.organizations.plan_of(organization)

    def plan_excess(self, organization: Organization | uuid.UUID | str) -> dict[str, Any]:
        """See :meth:`.Organizations.plan_excess`."""
        return self.organizations.plan_excess(organization)

    def authenticating_key_count(self, organization: Organization) -> int:
        """See :meth:`.Organizations.authenticating_key_count`."""
        return self.organizations.authenticating_key_count(organization)

    # -- keys ------------------------------------------------------------------------------------

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
        """See :meth:`.KeyLifecycle.create_key`."""
        return self.keys.create_key(
            organization,
            name,
            environment,
            scopes,
            description=description,
            expires_in_days=expires_in_days,
            expires_at=expires_at,
            rate_limit=rate_limit,
            metadata=metadata,
            roles=roles,
            level=level,
            allowed_networks=allowed_networks,
            granted_by=granted_by,
            actor=actor,
        )

    def list_keys(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        include_revoked: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[APIKey], int]:
        """See :meth:`.KeyLifecycle.list_keys`."""
        return self.keys.list_keys(
            organization, include_revoked=include_revoked, limit=limit, offset=offset
        )

    def get_key(
        self,
        key_id: uuid.UUID | str,
        *,
        organization: Organization | uuid.UUID | str | None = None,
    ) -> APIKey:
        """See :meth:`.KeyLifecycle.get_key`."""
        return self.keys.get_key(key_id, organization=organization)

    def update_key(
        self,
        key_id: uuid.UUID | str,
        *,
        organization: Organization | uuid.UUID | str | None = None,
        granted_by: VerifiedKey | None = None,
        actor: str | None = None,
        **changes: Any,
    ) -> APIKey:
        """See :meth:`.KeyLifecycle.update_key`."""
        return self.keys.update_key(
            key_id, organization=organization, granted_by=granted_by, actor=actor, **changes
        )

    def revoke_key(
        self,
        key_id: uuid.UUID | str,
        *,
        reason: str | None = None,
        revoked_by: str | None = None,
        organization: Organization | uuid.UUID | str | None = None,
    ) -> APIKey:
        """See :meth:`.KeyLifecycle.revoke_key`."""
        return self.keys.revoke_key(
            key_id, reason=reason, revoked_by=revoked_by, organization=organization
        )

    def rotate_key(
        self,
        key_id: uuid.UUID | str,
        *,
        overlap_hours: float = 24,
        rotated_by: str | None = None,
        organization: Organization | uuid.UUID | str | None = None,
        granted_by: VerifiedKey | None = None,
    ) -> CreatedKey:
        """See :meth:`.KeyLifecycle.rotate_key`."""
        return self.keys.rotate_key(
            key_id,
            overlap_hours=overlap_hours,
            rotated_by=rotated_by,
            organization=organization,
            granted_by=granted_by,
        )

    def define_role(self, name: str, scopes: Iterable[str]) -> None:
        """See :meth:`.KeyLifecycle.define_role`."""
        return self.keys.define_role(name, scopes)

    def seed(self) -> tuple[Organization, CreatedKey | None]:
        """See :meth:`.KeyLifecycle.seed`."""
        return self.keys.seed()

    # -- verification ----------------------------------------------------------------------------

    def verify_key(self, presented: str) -> VerifiedKey:
        """See :meth:`.Verification.verify_key`."""
        return self.verification.verify_key(presented)

    def verified_key_by_id(self, key_id: uuid.UUID) -> VerifiedKey | None:
        """See :meth:`.Verification.verified_key_by_id`."""
        return self.verification.verified_key_by_id(key_id)

    def check_usable(self, verified: VerifiedKey) -> None:
        """See :meth:`.Verification.check_usable`."""
        return self.verification.check_usable(verified)

    def snapshot(self, api_key: APIKey, organization: Organization) -> VerifiedKey:
        """See :meth:`.Verification.snapshot`."""
        return self.verification.snapshot(api_key, organization)

    # -- reports ---------------------------------------------------------------------------------

    def usage_stats(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        start: date,
        end: date,
        key: uuid.UUID | str | None = None,
    ) -> dict[str, Any]:
        """See :meth:`.UsageReports.usage_stats`."""
        return self.reports.usage_stats(organization, start=start, end=end, key=key)

    def monthly_usage(
        self, organization: Organization | uuid.UUID | str, month: str
    ) -> dict[str, Any]:
        """See :meth:`.UsageReports.monthly_usage`."""
        return self.reports.monthly_usage(organization, month)

    # -- retention -------------------------------------------------------------------------------

    def prune_usage(self, **options: Any) -> Any:
        """See :meth:`.Retention.prune_usage`."""
        return self.retention.prune_usage(**options)

    def backfill_rollups(self, **options: Any) -> Any:
        """See :meth:`.Retention.backfill_rollups`."""
        return self.retention.backfill_rollups(**options)

    def purge_keys(self, **options: Any) -> list[dict[str, Any]]:
        """See :meth:`.Retention.purge_keys`."""
        return self.retention.purge_keys(**options)
