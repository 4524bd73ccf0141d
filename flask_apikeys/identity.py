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
from typing import Any

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


class _VerifiedKeyFields:
    """The memory layout of :class:`VerifiedKey` without its frozen ``__setattr__``: filled by
    plain attribute stores, then made a :class:`VerifiedKey` (see :func:`build_verified_key`)."""

    __slots__ = VerifiedKey.__slots__


def build_verified_key(
    *,
    id: uuid.UUID,  # noqa: A002 (the field's name)
    organization: OrganizationInfo,
    name: str,
    environment: str,
    prefix: str,
    hint: str,
    scopes: frozenset[str],
    metadata: Mapping[str, object],
    custom_rate_limit: str | None,
    expires_at: datetime | None,
    revoked_at: datetime | None,
    is_active: bool,
    expires_at_timestamp: float | None,
    own_scopes: frozenset[str],
    roles: tuple[str, ...],
    level: str | None,
    allowed_networks: tuple[Network, ...],
) -> VerifiedKey:
    """The :class:`VerifiedKey` ``VerifiedKey(**fields)`` makes, for five times less work.

    Every request whose key is not cached builds one. The frozen dataclass's ``__init__``
    sets each of its 17 fields through ``object.__setattr__`` (about 1,700 instructions a
    field, 36k a snapshot); here each is a plain slot store and the object then takes the
    dataclass as its class (``__class__`` assignment, allowed between classes of the same
    slots), about 7k in all (``bench/README.md``). The result is a :class:`VerifiedKey` in
    every way: frozen, equal to and hashed as one built by its constructor.
    """
    snapshot: Any = object.__new__(_VerifiedKeyFields)  # typed by what it becomes
    snapshot.id = id
    snapshot.organization = organization
    snapshot.name = name
    snapshot.environment = environment
    snapshot.prefix = prefix
    snapshot.hint = hint
    snapshot.scopes = scopes
    snapshot.metadata = metadata
    snapshot.custom_rate_limit = custom_rate_limit
    snapshot.expires_at = expires_at
    snapshot.revoked_at = revoked_at
    snapshot.is_active = is_active
    snapshot.expires_at_timestamp = expires_at_timestamp
    snapshot.own_scopes = own_scopes
    snapshot.roles = roles
    snapshot.level = level
    snapshot.allowed_networks = allowed_networks
    snapshot.__class__ = VerifiedKey
    return snapshot  # type: ignore[no-any-return]
