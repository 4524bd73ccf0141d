"""An organization's part of the audit trail, filtered and paged, for the dashboard's audit page.

Key and organization events carry the organization's id. A refused attempt carries only the
prefix and hint of what was sent (the key is not trusted, so not looked up): it belongs to the
organization when that prefix is one of the organization's keys (a revoked or expired key still
in use, a key mistyped in its last characters). Guesses that match no key belong to nobody.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import sqlalchemy as sa

from ..models import APIKey, AuditRecord
from ..service.store import Store
from ..signals import SERVICE_EVENTS

#: Events the filter offers, in the order shown.
EVENTS = (
    *SERVICE_EVENTS,
    "auth.refused",
    "auth.expired",
    "dashboard.signed_in",
    "dashboard.signed_out",
)
PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What the audit page asks for; every field is optional but the period."""

    start: date
    end: date  # excluded
    event: str | None = None
    key_id: uuid.UUID | None = None


def audit_page(
    store: Store, organization_id: uuid.UUID, selection: AuditFilter, page: int
) -> tuple[list[AuditRecord], int]:
    """One page of the organization's audit records matching ``selection``, newest first.

    The records are found as two sets of ids, each read through an index of its own: the
    organization's records of the period, and the period's records that name one of its keys'
    prefixes (of which the refused attempts, which name no organization, are kept). One
    condition joining both with ``OR`` read every refused attempt of the period, whoever it
    was for; and "no organization" is no index's way in: most refused attempts have none.
    """
    in_period = (
        AuditRecord.created_at >= datetime.combine(selection.start, time.min, tzinfo=UTC),
        AuditRecord.created_at < datetime.combine(selection.end, time.min, tzinfo=UTC),
    )
    own_prefixes = sa.select(APIKey.key_prefix).where(APIKey.organization_id == organization_id)
    own_records = sa.select(AuditRecord.id).where(
        AuditRecord.organization_id == organization_id, *in_period
    )
    naming_own_prefixes = sa.select(AuditRecord.id).where(
        AuditRecord.key_prefix.in_(own_prefixes), *in_period
    )
    conditions = [
        AuditRecord.id.in_(sa.union_all(own_records, naming_own_prefixes)),
        sa.or_(
            AuditRecord.organization_id == organization_id,
            AuditRecord.organization_id.is_(None),
        ),
    ]
    if selection.event:
        conditions.append(AuditRecord.event == selection.event)
    if selection.key_id is not None:
        key_prefix = sa.select(APIKey.key_prefix).where(
            APIKey.id == selection.key_id, APIKey.organization_id == organization_id
        )
        conditions.append(
            sa.or_(
                AuditRecord.api_key_id == selection.key_id,
                sa.and_(
                    AuditRecord.api_key_id.is_(None),
                    AuditRecord.key_prefix.in_(key_prefix),
                ),
            )
        )
    query = sa.select(AuditRecord).where(*conditions).order_by(AuditRecord.id.desc())
    return store.page(query, PAGE_SIZE, (page - 1) * PAGE_SIZE)
