"""Who may use the admin API, and on which organizations.

Three callers get in: the bootstrap key of ``APIKEYS_ADMIN_KEY`` (every organization), a key
with the ``admin`` scope (its own organization only; another organization's ids answer 404,
exactly as ids that do not exist) and nobody else: other keys get 403, no key 401. A JWT access
token with the ``admin`` scope may only read and revoke (:data:`TOKEN_ENDPOINTS`); a key gets
nothing that its caller does not hold (checked by the service layer, see ``granted_by``).

The admin blueprint authenticates its own requests, because the bootstrap key is not a stored
key: the app-wide hook leaves the admin blueprint's endpoints alone (by endpoint, not by URL
prefix: an app's own route under the prefix is the app's), and this module runs the same checks
(failed-attempt block first, key in the URL, IP allowlist) itself. Admin calls of a key take
from its own admin budget (``APIKEYS_ADMIN_RATE_LIMIT``), not from its organization's limits,
so that a leaked key burning those cannot keep the organization from revoking it.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import cast

from flask import g, request

from ..auth import authenticate, extract_credential, refuse_blocked_address, refuse_key_in_url
from ..environ import CLAIMS_ENVIRON_KEY
from ..errors import InsufficientScope, MissingAPIKey, OrganizationNotFound
from ..hashing import admin_key_digest
from ..hooks import authenticate_and_limit
from ..identity import VerifiedKey
from ..logmask import mask_secrets
from ..models import Organization
from ..state import get_state

#: The scope that lets a key manage its own organization.
ADMIN_SCOPE = "admin"
#: The admin routes a JWT access token (narrowed to ``admin``) may call: reading and revoking.
#: Everything that creates or extends a credential needs the API key itself, so a stolen
#: short-lived token can never become a long-lived key. A new route is closed to tokens until
#: it is named here (decided by endpoint, never by URL).
TOKEN_ENDPOINTS = frozenset(
    f"apikeys_admin.{name}"
    for name in (
        "list_organizations",
        "get_organization",
        "list_keys",
        "get_key",
        "usage",
        "revoke_key",
    )
)
#: How the bootstrap key appears in the audit trail and in ``revoked_by``.
BOOTSTRAP_ACTOR = "bootstrap-admin-key"


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """The caller of an admin request.

    ``key`` is ``None`` for the bootstrap key, which manages every organization.
    """

    key: VerifiedKey | None

    @property
    def is_bootstrap(self) -> bool:
        return self.key is None

    @property
    def actor(self) -> str:
        """Who did it, as the audit trail records it (never a secret)."""
        if self.key is None:
            return BOOTSTRAP_ACTOR
        return f"api-key:{self.key.id}"

    def may_manage(self, organization_id: uuid.UUID) -> bool:
        return self.key is None or self.key.organization.id == organization_id


#: Admin endpoints that answer without a key: the OpenAPI document, and the catch-all that
#: answers a path or method the API does not have (404/405: the document lists them all).
OPEN_ENDPOINTS = frozenset(
    {"apikeys_admin.openapi", "apikeys_admin.unknown", "apikeys_admin.unknown_root"}
)


def authenticate_admin() -> None:
    """``before_request`` of the admin blueprint: find the caller or refuse (401/403)."""
    if request.method == "OPTIONS" or request.endpoint in OPEN_ENDPOINTS:
        return
    current = get_state()
    current_request = request._get_current_object()  # type: ignore[attr-defined]
    environ = current_request.environ
    # Before any credential is compared, the bootstrap key included.
    refuse_blocked_address(environ, current)
    if current_request.query_string:
        refuse_key_in_url(current_request, tokens_enabled=current.tokens is not None)
    digest = current.settings.admin_key_digest
    presented = extract_credential(environ)
    if digest is not None and presented is not None:
        # Hash first so the comparison costs the same whatever the presented length.
        if hmac.compare_digest(admin_key_digest(presented), digest):
            g._apikeys_admin = AdminCaller(key=None)
            return
    limits = current.limits
    if limits is not None:
        # Failed attempts count; the organization's limits and quota do not apply here.
        key = authenticate_and_limit(current_request, current, enforce_limits=False)
    else:
        key = authenticate(current_request, current)
    if key is None:
        raise MissingAPIKey(
            "The admin API needs a key with the admin scope, or the bootstrap admin key."
        )
    if limits is not None:
        limits.enforce_admin(key, current_request)
    if not key.has_scope(ADMIN_SCOPE):
        raise InsufficientScope(
            "The admin API needs a key with the admin scope.", required_scopes=[ADMIN_SCOPE]
        )
    if CLAIMS_ENVIRON_KEY in current_request.environ and request.endpoint not in TOKEN_ENDPOINTS:
        raise InsufficientScope(
            "An access token may read and revoke on the admin API, never create, rotate or "
            "change keys or organizations: send the API key itself.",
            required_scopes=[ADMIN_SCOPE],
        )
    g._apikeys_admin = AdminCaller(key=key)


def caller() -> AdminCaller:
    """The caller of the current admin request (set by :func:`authenticate_admin`)."""
    return cast(AdminCaller, g._apikeys_admin)


def require_bootstrap(action: str) -> None:
    """Refuse (403) what only the bootstrap key may do, e.g. create organizations."""
    if not caller().is_bootstrap:
        raise InsufficientScope(
            f"Only the bootstrap admin key (APIKEYS_ADMIN_KEY) may {action}.",
            required_scopes=[ADMIN_SCOPE],
        )


def managed_organization(reference: str) -> Organization:
    """The organization of the URL, if the caller may manage it; otherwise 404, as if missing."""
    organization = get_state().service.organizations.get_organization(reference)
    if not caller().may_manage(organization.id):
        raise OrganizationNotFound(f"No organization {mask_secrets(repr(reference))}.")
    return organization
