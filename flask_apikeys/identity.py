"""What a view sees of the caller: immutable snapshots of a verified key and its organization.

Snapshots, not ORM rows, because they are cached across requests (a row belongs to one
session) and because a view must not be able to change a key by assigning to ``current_key``.
Use :meth:`flask_apikeys.APIKeys.get_key` when you need the row itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .network import Network
from .scopes import scope_grants


@dataclass(frozen=True, slots=True)
class OrganizationInfo:
    """An organization as seen during a request, with its effective limits."""

    id: uuid.UUID
    name: str
    slug: str
    plan: str
    is_active: bool
    #: The plan's values unless the organization overrides them; ``None`` is unlimited.
    rate_limit_per_minute: int | None
    monthly_request_limit: int | None


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    """A key whose hash matched a stored one; :meth:`refusal` says if it may still be used."""

    id: uuid.UUID
    organization: OrganizationInfo
    name: str
    environment: str
    prefix: str
    hint: str
    #: Effective scopes: the key's own, its roles' and its level's (what ``has_scope`` checks).
    scopes: frozenset[str]
    metadata: Mapping[str, object]
    custom_rate_limit: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    is_active: bool
    #: ``expires_at`` as a POSIX timestamp, so the per-request check is one float comparison.
    expires_at_timestamp: float | None
    #: The scopes, roles and level stored on the key itself.
    own_scopes: frozenset[str] = frozenset()
    roles: tuple[str, ...] = ()
    level: str | None = None
    #: Where the key may be used from; empty means anywhere.
    allowed_networks: tuple[Network, ...] = ()

    def has_scope(self, scope: str) -> bool:
        """Whether this key's scopes cover ``scope``, wildcards included."""
        return scope_grants(self.scopes, scope)

    def is_expired(self, now: float | None = None) -> bool:
        """Whether the key's expiry (or the end of its rotation overlap) has passed."""
        if self.expires_at_timestamp is None:
            return False
        return (time.time() if now is None else now) >= self.expires_at_timestamp
