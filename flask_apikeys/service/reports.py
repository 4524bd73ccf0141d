"""Usage reports: an organization's (or one key's) usage over a period or a calendar month.

The queries are :mod:`flask_apikeys.usage.stats`; this part finds the organization and key
and reads on a connection of its own.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from ..models import Organization
from ..usage import stats
from .lifecycle import KeyLifecycle
from .organizations import Organizations
from .store import Store


class UsageReports:
    """Usage statistics of organizations and keys."""

    def __init__(self, store: Store, organizations: Organizations, keys: KeyLifecycle) -> None:
        self.store = store
        self.organizations = organizations
        self.keys = keys

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
        organization = self.organizations.get_organization(organization)
        key_id = None if key is None else self.keys.get_key(key, organization=organization).id

        def read_now() -> dict[str, Any]:
            # On a connection of its own: the session's transaction may have begun before the
            # usage writer's last commit, and under REPEATABLE READ (MySQL, MariaDB) it would
            # not see those rows.
            with self.store.session.get_bind().engine.connect() as connection:
                return stats.usage_stats(
                    connection, organization.id, start=start, end=end, api_key_id=key_id
                )

        return self.store.read(read_now)

    def monthly_usage(
        self, organization: Organization | uuid.UUID | str, month: str
    ) -> dict[str, Any]:
        """Usage of one calendar month (UTC), e.g. ``"2026-01"``."""
        start, end = stats.month_bounds(month)
        return {"month": month, **self.usage_stats(organization, start=start, end=end)}
