"""An organization's part of the audit trail, filtered and paged, for the dashboard's audit page.

Key and organization events carry the organization's id, and so does a refused attempt with a
stored key (revoked, expired, used from outside its networks). Guesses that match no key belong
to nobody, whatever prefix they start with: a visible prefix is four random characters that
keys of several organizations may share, and anyone can write it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import sqlalchemy as sa

from ..models import AuditRecord
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
    """One page of the organization's audit records matching ``selection``, newest first."""
    conditions = [
        AuditRecord.organization_id == organization_id,
        AuditRecord.created_at >= datetime.combine(selection.start, time.min, tzinfo=UTC),
        AuditRecord.created_at < datetime.combine(selection.end, time.min, tzinfo=UTC),
    ]
    if selection.event:
        conditions.append(AuditRecord.event == selection.event)
    if selection.key_id is not None:
        conditions.append(AuditRecord.api_key_id == selection.key_id)
    # The order of the organization's index (its id last), so that a page is read from it
    # without sorting the period's records.
    query = (
        sa.select(AuditRecord)
        .where(*conditions)
        .order_by(AuditRecord.created_at.desc(), AuditRecord.id.desc())
    )
    return store.page(query, PAGE_SIZE, (page - 1) * PAGE_SIZE)
