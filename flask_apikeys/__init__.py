"""API-key authentication for Flask: hashed keys, scopes, rate limits, usage and audit."""

from __future__ import annotations

from .auth import current_key
from .errors import APIKeyError
from .extension import APIKeys
from .identity import OrganizationInfo, VerifiedKey
from .models import APIKey, Organization
from .scopes import public, require_any_scope, require_scopes
from .service.lifecycle import CreatedKey
from .usage.writer import record_cost

__version__ = "0.1.0.dev0"

__all__ = [
    "APIKey",
    "APIKeyError",
    "APIKeys",
    "CreatedKey",
    "Organization",
    "OrganizationInfo",
    "VerifiedKey",
    "current_key",
    "public",
    "record_cost",
    "require_any_scope",
    "require_scopes",
]
