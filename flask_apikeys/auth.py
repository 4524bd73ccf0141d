"""The request side: find the credential, authenticate it once per request, expose ``current_key``.

:func:`authenticate_request` is idempotent within a request (the outcome is kept in the
request's WSGI environ, and the key on ``g._apikeys_key``), so the ``before_request`` hook,
the scope decorators and a rate limiter's key function that runs before our hook can all call
it and pay for one verification.
"""

from __future__ import annotations

import hmac
from time import perf_counter
from typing import Any, cast

from flask import Request, g, has_request_context, request
from werkzeug.local import LocalProxy

from . import signals
from .environ import (
    CREDENTIAL_ENVIRON_KEY,
    OUTCOME_ENVIRON_KEY,
    VERIFICATION_SECONDS_ENVIRON_KEY,
)
from .errors import (
    APIKeyError,
    APIKeyInURL,
    InvalidAPIKey,
    IPNotAllowed,
)
from .hashing import cache_digest
from .identity import VerifiedKey
from .keys import looks_like_access_token, looks_like_key
from .network import address_allowed, client_address
from .state import ExtensionState, get_state

#: Query parameters that can only mean "here is my key"; any key-shaped value is refused too.
URL_KEY_PARAMETERS = frozenset({"api_key", "apikey", "api-key", "x-api-key", "x_api_key"})
#: With access tokens on, these parameters (RFC 6750's ``access_token``) are refused too.
URL_TOKEN_PARAMETERS = frozenset({"access_token"})
AUTHORIZATION_SCHEMES = frozenset({"bearer", "api-key"})
_NOT_YET = object()


def get_current_key() -> VerifiedKey | None:
    """The key that authenticated this request, or ``None``."""
    if has_request_context():
        outcome = request.environ.get(OUTCOME_ENVIRON_KEY)
        return None if outcome is None or isinstance(outcome, APIKeyError) else outcome
    return cast("VerifiedKey | None", g.get("_apikeys_key"))


#: The verified key of the current request (a :class:`~flask_apikeys.identity.VerifiedKey`), or
#: ``None`` (falsy) on public routes and unauthenticated requests.
current_key: VerifiedKey = LocalProxy(get_current_key)  # type: ignore[assignment]


def extract_credential(environ: dict[str, Any]) -> str | None:
    """The key sent in ``Authorization: Bearer|Api-Key …`` or ``X-API-Key``, or ``None``.

    Reads the WSGI environ directly (no header object is built). Sending two different keys is
    refused rather than guessed at.
    """
    from_authorization = None
    authorization = environ.get("HTTP_AUTHORIZATION")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() in AUTHORIZATION_SCHEMES:
            from_authorization = value.strip() or None
    from_header = (environ.get("HTTP_X_API_KEY") or "").strip() or None
    if from_authorization and from_header:
        same = hmac.compare_digest(
            from_authorization.encode("utf-8", "surrogateescape"),
            from_header.encode("utf-8", "surrogateescape"),
        )
        if not same:
            raise InvalidAPIKey("Two different keys were sent; send one.")
    return from_authorization or from_header


def refuse_key_in_url(current_request: Request, *, tokens_enabled: bool = False) -> None:
    """Refuse (400) a request that carries a key in its query string, where it leaks to logs.

    A key-shaped parameter name counts as much as a value (``?pk_live_…``, a key appended to
    the URL as it is). With access tokens on, a JWT-shaped name or value or an
    ``access_token`` parameter is refused too.
    """
    for name, value in current_request.args.items(multi=True):
        lowered = name.lower()
        if lowered in URL_KEY_PARAMETERS or looks_like_key(value) or looks_like_key(name):
            raise APIKeyInURL(
                "API keys must not be sent in the URL, where logs and browser history keep them. "
                "Send it in the Authorization or X-API-Key header, and revoke this key."
            )
        if tokens_enabled and (
            lowered in URL_TOKEN_PARAMETERS
            or looks_like_access_token(value)
            or looks_like_access_token(name)
        ):
            raise APIKeyInURL(
                "Access tokens must not be sent in the URL, where logs and browser history keep "
                "them. Send it in the Authorization header (Bearer)."
            )


def refuse_blocked_address(environ: dict[str, Any], state: ExtensionState) -> None:
    """Refuse (429) an address blocked for failed attempts, before any credential is compared.

    Every path that compares a credential (this module's :func:`authenticate`, the admin API's
    bootstrap key) calls this first, so a blocked address learns nothing from a right guess.
    """
    limits = state.limits
    if limits is not None and limits.blocked and state.settings.failed_auth_limit:
        limits.refuse_if_blocked(client_address(environ, state.settings.trusted_proxies))


def refuse_outside_networks(
    key: VerifiedKey, environ: dict[str, Any], trusted_proxies: int
) -> None:
    """Refuse (403) a request from outside the key's ``allowed_networks`` (none: anywhere).

    Every credential made from a key (the key, its access tokens, a dashboard session it
    started) is used only from where the key may be.
    """
    if key.allowed_networks:
        address = client_address(environ, trusted_proxies)
        if not address_allowed(address, key.allowed_networks):
            refusal = IPNotAllowed(f"This key may not be used from {address}.")
            raise refusal.about_key(key.id, key.organization.id)


def refuse_other_credential(environ: dict[str, Any], credential: str) -> None:
    """Refuse (401) ``credential`` when the request was authenticated with another one.

    Only callers that pass a credential of their own get here, never the hook's hot path.
    """
    authenticated = environ.get(CREDENTIAL_ENVIRON_KEY)
    if authenticated is None:  # the headers' credential, read by the first call
        header = extract_credential(environ)
        if header is None:
            return  # a refusal about no credential (a blocked address, a key in the URL) stands
        authenticated = cache_digest(header)
    if not hmac.compare_digest(authenticated, cache_digest(credential)):
        raise InvalidAPIKey("Two different keys were sent; send one.")


def authenticate_request() -> VerifiedKey | None:
    """Authenticate the current request once; return its key, ``None``, or raise why not."""
    return authenticate(request._get_current_object(), get_state())  # type: ignore[attr-defined]


def authenticate(
    current_request: Request, state: ExtensionState, credential: str | None = None
) -> VerifiedKey | None:
    """:func:`authenticate_request` for callers that already hold the request and state.

    :param credential: the key or token to verify instead of the one in the headers (the
        OAuth endpoints read it from HTTP Basic or the form body). If the request was already
        authenticated with another credential (the headers', by a key function that ran
        first), it is refused as two different keys, never answered with the other's outcome.
    """
    environ = current_request.environ
    outcome = environ.get(OUTCOME_ENVIRON_KEY, _NOT_YET)
    if credential is not None and outcome is not _NOT_YET and outcome is not None:
        refuse_other_credential(environ, credential)
    # A key function run before the view may have found no header credential; the credential
    # given now is still verified.
    if outcome is _NOT_YET or (outcome is None and credential is not None):
        presented = None
        tokens = state.tokens
        verification_started = perf_counter()
        try:
            refuse_blocked_address(environ, state)
            if current_request.query_string:
                refuse_key_in_url(current_request, tokens_enabled=tokens is not None)
            presented = credential if credential is not None else extract_credential(environ)
            if presented is None:
                outcome = None
            elif tokens is not None and tokens.is_token(presented):
                outcome = tokens.verify(presented, environ)  # a JWT issued for a key
            else:
                outcome = state.service.verification.verify_key(presented)
            if outcome is not None and outcome.allowed_networks:
                refuse_outside_networks(outcome, environ, state.settings.trusted_proxies)
        except APIKeyError as error:
            outcome = error
            if presented is not None:
                state.record_refusal(error, environ, presented)
        environ[OUTCOME_ENVIRON_KEY] = outcome
        if credential is not None:
            environ[CREDENTIAL_ENVIRON_KEY] = cache_digest(credential)
        if presented is not None:
            seconds = environ[VERIFICATION_SECONDS_ENVIRON_KEY] = (
                perf_counter() - verification_started
            )
            if signals.request_authenticated.receivers:
                signals.send_authenticated(outcome, seconds)
        # On the app context's object itself: setting through the ``g`` proxy costs more.
        app_globals = g._get_current_object()
        app_globals._apikeys_key = None if isinstance(outcome, APIKeyError) else outcome
    if isinstance(outcome, APIKeyError):
        raise outcome
    return outcome  # type: ignore[no-any-return]
