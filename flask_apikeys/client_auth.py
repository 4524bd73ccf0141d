"""Who is calling the OAuth 2.0 endpoints: client authentication as RFC 6749 section 2.3 has it.

A client is a key. It authenticates with HTTP Basic (``client_secret_basic``: the key's id or
visible prefix as user name, the key as password), with ``client_id`` and ``client_secret`` in
the form (``client_secret_post``), or with the key (or, where the endpoint allows, an access
token) in the usual ``Authorization``/``X-API-Key`` headers. Exactly one method per request.
The secret is then verified through the same path as any request's key (failed-attempt block,
rate limits, network allowlist), and the client id must name the key that matched.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote_plus

from flask import Request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from .admin.access import ADMIN_SCOPE, AdminCaller
from .auth import authenticate, extract_credential, refuse_blocked_address, refuse_key_in_url
from .bodies import too_large
from .environ import CLAIMS_ENVIRON_KEY
from .errors import (
    APIKeyError,
    APIKeyInURL,
    AuthenticationError,
    AuthorizationError,
    LimitExceeded,
    OAuthError,
)
from .hashing import admin_key_digest
from .hooks import authenticate_and_limit
from .identity import VerifiedKey
from .state import ExtensionState

# Names of RFC 7591 authentication methods, not secrets.
CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105
CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105
#: The key (or a token, where allowed) in ``Authorization: Bearer``/``Api-Key`` or ``X-API-Key``.
HEADER_CREDENTIAL = "bearer"
BASIC_CHALLENGE = 'Basic realm="api"'
FORM_MIMETYPE = "application/x-www-form-urlencoded"
#: The largest body the OAuth endpoints read before the caller is authenticated; a token
#: request is a few hundred bytes.
MAX_UNAUTHENTICATED_BODY = 16 * 1024


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """How a client authenticated: the method, the client id it gave, the secret (never shown)."""

    method: str
    client_id: str | None
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Client:
    """An authenticated caller of the OAuth endpoints; ``key`` is ``None`` for the bootstrap key."""

    key: VerifiedKey | None
    method: str
    #: Authenticated with an access token rather than with the key itself.
    by_token: bool = False

    @property
    def caller(self) -> AdminCaller:
        return AdminCaller(key=self.key)

    def owns(self, key_id: uuid.UUID) -> bool:
        return self.key is not None and self.key.id == key_id

    def administers(self, organization_id: uuid.UUID) -> bool:
        """The bootstrap key, or a key with the ``admin`` scope in that organization."""
        caller = self.caller
        if caller.is_bootstrap:
            return True
        return caller.may_manage(organization_id) and cast("VerifiedKey", self.key).has_scope(
            ADMIN_SCOPE
        )


def _challenge(method: str) -> str:
    """The ``WWW-Authenticate`` of a 401 for a client that used ``method`` (RFC 6749 5.2)."""
    if method == HEADER_CREDENTIAL:
        return 'Bearer realm="api", error="invalid_token"'
    return BASIC_CHALLENGE


def invalid_client(detail: str, method: str = CLIENT_SECRET_BASIC) -> OAuthError:
    error = "invalid_token" if method == HEADER_CREDENTIAL else "invalid_client"
    return OAuthError(error, detail, status=401, challenge=_challenge(method))


def _too_many(error: LimitExceeded) -> OAuthError:
    """A 429 (a limit, or the failed-attempt block) as an RFC 6749 error, its headers kept."""
    return OAuthError(error.error_code, error.detail, status=429, headers=error.response_headers())


def invalid_request(detail: str) -> OAuthError:
    return OAuthError("invalid_request", detail)


# -- reading the request ----------------------------------------------------------------------


def _body_too_large(limit: int) -> OAuthError:
    return OAuthError("invalid_request", too_large(limit), status=413)


def refuse_big_body(current_request: Request) -> None:
    """413 for a body larger than a token request ever is, or than the app's
    ``MAX_CONTENT_LENGTH``, before any of it is read: the OAuth endpoints read their body
    before the caller is authenticated."""
    app_limit = current_request.max_content_length
    limit = (
        MAX_UNAUTHENTICATED_BODY if app_limit is None else min(app_limit, MAX_UNAUTHENTICATED_BODY)
    )
    length = current_request.content_length
    if length is not None and length > limit:
        raise _body_too_large(limit)
    current_request.max_content_length = limit  # a body without a length stops there too


def read_form(current_request: Request) -> MultiDict[str, str]:
    """The form of a request to the OAuth endpoints, read within :func:`refuse_big_body`'s
    limit; over it, an RFC 6749 error (werkzeug's own 413 is an HTML page)."""
    refuse_big_body(current_request)
    return _capped_form(current_request)


def _capped_form(current_request: Request) -> MultiDict[str, str]:
    """The form of a request :func:`refuse_big_body` has capped; a body without a length that
    runs past the cap is the same RFC 6749 error."""
    try:
        return current_request.form
    except RequestEntityTooLarge:
        raise _body_too_large(current_request.max_content_length or 0) from None


def form_parameters(current_request: Request, *names: str) -> dict[str, str]:
    """The form fields ``names`` that were sent, each at most once (RFC 6749 3.2)."""
    refuse_big_body(current_request)
    if current_request.mimetype != FORM_MIMETYPE:
        raise invalid_request(f"Send the parameters as {FORM_MIMETYPE}.")
    form = _capped_form(current_request)  # capped above
    values = {}
    for name in names:
        sent = form.getlist(name)
        if len(sent) > 1:
            raise invalid_request(f"The parameter {name} was sent more than once.")
        if sent:
            values[name] = sent[0]
    return values


def _basic_credentials(environ: dict[str, Any]) -> tuple[str, str] | None:
    """Client id and secret from ``Authorization: Basic`` (form-encoded, RFC 6749 2.3.1)."""
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise invalid_client("The Basic credentials are malformed.") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        raise invalid_client("Send the client id and the key as Basic user name and password.")
    return unquote_plus(client_id), unquote_plus(secret)


def read_client_credentials(current_request: Request) -> ClientCredentials:
    """The one authentication method the client used; several, or none, are refused."""
    environ = current_request.environ
    basic = _basic_credentials(environ)
    form = {}
    if current_request.mimetype == FORM_MIMETYPE:
        form = form_parameters(current_request, "client_id", "client_secret")
    try:
        header = extract_credential(environ)
    except APIKeyError:
        raise invalid_request("Two different keys were sent; send one.") from None
    used = [basic is not None, "client_secret" in form, header is not None]
    if sum(used) > 1:
        raise invalid_request("Use one way of authenticating the client, not several.")
    form_client_id = form.get("client_id")
    if basic is not None:
        client_id, secret = basic
        if form_client_id is not None and form_client_id != client_id:
            raise invalid_request("The client_id in the body differs from the Basic one.")
        return ClientCredentials(CLIENT_SECRET_BASIC, client_id, secret)
    if "client_secret" in form:
        if not form_client_id:
            raise invalid_client("Send client_id with client_secret.", CLIENT_SECRET_POST)
        return ClientCredentials(CLIENT_SECRET_POST, form_client_id, form["client_secret"])
    if header is not None:
        return ClientCredentials(HEADER_CREDENTIAL, form_client_id, header)
    raise invalid_client(
        "Authenticate the client: HTTP Basic with the key's id as user name and the key as "
        "password, or client_id and client_secret in the form."
    )


def _names_key(client_id: str, key: VerifiedKey) -> bool:
    """Whether ``client_id`` is the key's id or its visible prefix (constant time)."""
    given = client_id.encode("utf-8", "surrogateescape")
    by_id = hmac.compare_digest(given, str(key.id).encode("ascii"))
    by_prefix = hmac.compare_digest(given, key.prefix.encode("utf-8"))
    return by_id or by_prefix


def authenticate_client(current_request: Request, state: ExtensionState) -> Client:
    """Verify the client's credentials the way every request is verified, or refuse.

    A key or token in the URL is refused first, whatever else is wrong and whoever calls (the
    bootstrap key too): RFC 6749 2.3.1 keeps credentials out of the URI, where logs keep them.
    """
    if current_request.query_string:
        try:
            refuse_key_in_url(current_request, tokens_enabled=state.tokens is not None)
        except APIKeyInURL as error:
            raise invalid_request(error.detail) from None
    credentials = read_client_credentials(current_request)
    method = credentials.method
    digest = state.settings.admin_key_digest
    if method == HEADER_CREDENTIAL and digest is not None:
        try:  # a blocked address may not try the bootstrap key here either
            refuse_blocked_address(current_request.environ, state)
        except LimitExceeded as error:
            raise _too_many(error) from None
        if hmac.compare_digest(admin_key_digest(credentials.secret), digest):
            return Client(key=None, method=method)
    tokens = state.tokens
    if method != HEADER_CREDENTIAL and tokens is not None and tokens.is_token(credentials.secret):
        raise invalid_client("The client secret is the API key, not an access token.", method)
    try:
        if state.limits is not None:
            key = authenticate_and_limit(current_request, state, credentials.secret)
        else:
            key = authenticate(current_request, state, credentials.secret)
    except (AuthenticationError, AuthorizationError) as error:
        raise invalid_client(error.detail, method) from None
    except LimitExceeded as error:
        raise _too_many(error) from None
    except APIKeyError as error:
        code = "invalid_request" if error.code == 400 else error.error_code
        raise OAuthError(code, error.detail, status=error.code or 400) from None
    if key is None:  # pragma: no cover - a credential was given, so it was verified
        raise invalid_client("No client credentials.", method)
    if credentials.client_id is not None and not _names_key(credentials.client_id, key):
        raise invalid_client("The client id does not name the key sent as secret.", method)
    by_token = CLAIMS_ENVIRON_KEY in current_request.environ
    return Client(key=key, method=method, by_token=by_token)
