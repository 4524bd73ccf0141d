"""Who is signed in to the dashboard: sign-in, the server-side session, CSRF, security headers.

An admin pastes an ``admin``-scope key (or the bootstrap admin key) once. It is verified the
way the admin API verifies it (failed-attempt block first, refusals counted and audited), and
then forgotten: the browser gets a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie
(``Secure`` over HTTPS) limited to the dashboard's path, and the database keeps only the
token's hash (:class:`~flask_apikeys.models.DashboardSession`). Each request loads that row and
checks the key again, so signing out, expiry and revoking the key all end the session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import sqlalchemy as sa
from flask import g, request
from werkzeug.wrappers import Response

from ..admin.access import ADMIN_SCOPE, AdminCaller
from ..auth import authenticate, refuse_blocked_address, refuse_outside_networks
from ..environ import CLAIMS_ENVIRON_KEY
from ..errors import (
    APIKeyError,
    AuthorizationError,
    InsufficientScope,
    InvalidAPIKey,
    MissingAPIKey,
)
from ..hashing import admin_key_digest
from ..hooks import authenticate_and_limit
from ..models import DashboardSession, Organization
from ..state import get_state

#: The session cookie: a random token, never the key.
SESSION_COOKIE = "apikeys_dashboard_session"
#: Double-submit token of the sign-in form (there is no session yet to hold one).
SIGN_IN_COOKIE = "apikeys_dashboard_signin"
CSRF_FIELD = "csrf_token"
#: Sent with every dashboard response. No inline script or style: the copy button's script
#: and the stylesheet are files of the blueprint.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class CSRFRefused(AuthorizationError):
    """A dashboard form arrived without the token of the session that showed it."""

    error_code = "csrf_refused"
    title = "Forbidden"


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The signed-in admin of the current dashboard request."""

    caller: AdminCaller
    organization_id: uuid.UUID
    csrf_token: str
    expires_at: datetime


def token_hash(token: str, bootstrap_digest: bytes | None = None) -> str:
    """What the database keeps of a session's token.

    A session of the bootstrap admin key keeps it bound to that key (an HMAC keyed by the
    key's digest): once ``APIKEYS_ADMIN_KEY`` is replaced, as after a leak, its sessions are
    found no more, like those of a revoked key.
    """
    material = token.encode("utf-8", "surrogateescape")
    if bootstrap_digest is not None:
        return hmac.new(bootstrap_digest, material, hashlib.sha256).hexdigest()
    return hashlib.sha256(material).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


def verify_admin_credential(presented: str) -> AdminCaller:
    """Who ``presented`` is, checked exactly as the admin API checks a caller, or raise why not.

    The failed-attempt block applies before any comparison, a wrong key counts toward it and
    is audited as a refused attempt, and an access token is refused: signing in starts
    something longer-lived than a token, so it needs the key itself.
    """
    state = get_state()
    current_request = request._get_current_object()  # type: ignore[attr-defined]
    refuse_blocked_address(current_request.environ, state)
    if not presented:
        raise MissingAPIKey("Paste an admin key to sign in.")
    digest = state.settings.admin_key_digest
    if digest is not None and hmac.compare_digest(admin_key_digest(presented), digest):
        return AdminCaller(key=None)
    if state.limits is not None:
        key = authenticate_and_limit(
            current_request, state, credential=presented, enforce_limits=False
        )
    else:
        key = authenticate(current_request, state, credential=presented)
    if key is None:  # pragma: no cover - a credential was given
        raise InvalidAPIKey("The API key is malformed.")
    if CLAIMS_ENVIRON_KEY in current_request.environ:
        raise InsufficientScope(
            "Sign in with the API key itself, not an access token.", required_scopes=[ADMIN_SCOPE]
        )
    if not key.has_scope(ADMIN_SCOPE):
        raise InsufficientScope(
            "Only a key with the admin scope may sign in to the dashboard.",
            required_scopes=[ADMIN_SCOPE],
        )
    caller = AdminCaller(key=key)
    spend_admin_budget(caller)  # each sign-in stores a session and an audit record
    return caller


def start_session(caller: AdminCaller, organization: Organization) -> tuple[str, DashboardSession]:
    """Store a new session for ``caller`` on ``organization``; return the cookie's token."""
    state = get_state()
    token = secrets.token_urlsafe(32)
    started = now()
    bootstrap_digest = state.settings.admin_key_digest if caller.key is None else None
    row = DashboardSession(
        token_hash=token_hash(token, bootstrap_digest),
        api_key_id=None if caller.key is None else caller.key.id,
        organization_id=organization.id,
        created_at=started,
        expires_at=started + timedelta(seconds=state.settings.dashboard_session_lifetime),
        csrf_secret=secrets.token_urlsafe(32),
    )
    store = state.service.store

    def insert() -> None:
        # Sessions that expired without being presented again go here, a sign-in at a time.
        store.session.execute(
            sa.delete(DashboardSession).where(DashboardSession.expires_at <= started)
        )
        store.session.add(row)

    store.commit(insert)
    return token, row


def end_session(token: str | None) -> None:
    """Delete the session of ``token`` (signing out; nothing happens for an unknown token)."""
    if not token:
        return
    state = get_state()
    store = state.service.store
    hashed = {token_hash(token)}
    if state.settings.admin_key_digest is not None:
        hashed.add(token_hash(token, state.settings.admin_key_digest))

    def delete() -> None:
        store.session.execute(
            sa.delete(DashboardSession).where(DashboardSession.token_hash.in_(hashed))
        )

    store.commit(delete)


def load_session() -> SignedIn | None:
    """The signed-in admin of this request's cookie, or ``None`` (and the row is deleted)
    when the session expired or its key can no longer manage the organization."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    state = get_state()
    store = state.service.store
    row = store.read(lambda: store.session.get(DashboardSession, token_hash(token)))
    bootstrap_digest = state.settings.admin_key_digest
    if row is None and bootstrap_digest is not None:
        # A bootstrap key's session, found only while the key that started it is configured.
        hashed = token_hash(token, bootstrap_digest)
        row = store.read(lambda: store.session.get(DashboardSession, hashed))
        if row is None or row.api_key_id is not None:
            return None
    elif row is None:
        return None
    elif row.api_key_id is None:  # a bootstrap session not bound to the key: end it
        end_session(token)
        return None
    caller = None if row.expires_at <= now() else _still_allowed(row)
    if caller is None:
        end_session(token)
        return None
    return SignedIn(caller, row.organization_id, row.csrf_secret, row.expires_at)


def _still_allowed(row: DashboardSession) -> AdminCaller | None:
    """The session's caller if its key may still manage the session's organization."""
    state = get_state()
    if row.api_key_id is None:
        return None if state.settings.admin_key_digest is None else AdminCaller(key=None)
    key = state.service.verification.verified_key_by_id(row.api_key_id)
    if key is None or key.organization.id != row.organization_id:
        return None
    try:
        # Revoked, expired (a rotation's overlap over), organization switched off; and used
        # from outside the key's networks: the cookie is the key's, it works where the key does.
        state.service.verification.check_usable(key)
        refuse_outside_networks(key, request.environ, state.settings.trusted_proxies)
    except APIKeyError:
        return None
    return AdminCaller(key=key) if key.has_scope(ADMIN_SCOPE) else None


def spend_admin_budget(caller: AdminCaller) -> None:
    """Take one unit of the caller's admin budget (``APIKEYS_ADMIN_RATE_LIMIT``), or raise
    429: the dashboard is another door to the admin API's operations, not a way around its
    limit. The bootstrap key has no budget there either."""
    limits = get_state().limits
    key = caller.key
    if limits is not None and key is not None:
        limits.enforce_admin(key, request._get_current_object())  # type: ignore[attr-defined]


def signed_in() -> SignedIn:
    """The signed-in admin of the current request (set by the blueprint's ``before_request``)."""
    return cast(SignedIn, g._apikeys_dashboard)


def check_csrf(expected: str | None) -> None:
    """Refuse (403) a form whose token is not ``expected``, compared in constant time."""
    sent = request.form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CSRFRefused(
            "This form is stale or came from another site; reload the page and try again."
        )


def set_session_cookie(response: Response, token: str, prefix: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=get_state().settings.dashboard_session_lifetime,
        path=prefix,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def clear_session_cookie(response: Response, prefix: str) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=prefix, secure=request.is_secure, httponly=True, samesite="Strict"
    )


def set_sign_in_cookie(response: Response, token: str, prefix: str) -> None:
    """The sign-in form's double-submit token, as a cookie the form's field must match."""
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path=prefix,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def retry_after(error: APIKeyError) -> dict[str, str]:
    """The ``Retry-After`` of a refusal (429), for the page that shows it; a page has no use
    for the API's ``WWW-Authenticate`` challenge."""
    return {
        name: value for name, value in error.response_headers().items() if name == "Retry-After"
    }


def add_security_headers(response: Response) -> Response:
    """``after_request`` of the dashboard: the headers of :data:`SECURITY_HEADERS`."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
