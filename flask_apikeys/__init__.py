"""API-key authentication for Flask: hashed keys, scopes, rate limits, usage and audit."""

from __future__ import annotations

from ._version import __version__
from .auth import current_key
from .decorators import public, require_any_scope, require_scopes
from .errors import APIKeyError
from .extension import APIKeys
from .identity import OrganizationInfo, VerifiedKey
from .models import APIKey, Organization
from .service import CreatedKey
from .usage import record_cost

__all__ = [
    "__version__",
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
