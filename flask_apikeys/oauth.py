"""The OAuth 2.0 face of the extension, so standard clients and gateways work unchanged.

- The client credentials grant (RFC 6749 section 4.4) at the token endpoint: the client id
  names a key (its id, or its visible prefix ``pk_live_AbCd``) and the client secret *is* the
  key, sent with HTTP Basic (``client_secret_basic``) or in the form (``client_secret_post``).
  The answer is section 5.1's, a refusal section 5.2's (:class:`~flask_apikeys.errors.OAuthError`).
- Authorization-server metadata (RFC 8414) at ``/.well-known/oauth-authorization-server``.
- Token introspection (RFC 7662): may a key or access token be used, and for what? For callers
  holding ``APIKEYS_INTROSPECTION_SCOPE``, within their own organization.
- Revocation (RFC 7009) of a key, by itself or an admin of its organization, or of an access
  token (its ``jti`` goes on the deny-list of :mod:`flask_apikeys.revocation`).

Every caller authenticates through the same path as any request (failed-attempt block, rate
limits, network allowlist, usage row), with the secret taken from wherever the client put it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_plus

from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request, url_for

from .admin.access import ADMIN_SCOPE, AdminCaller
from .auth import authenticate, extract_credential
from .errors import (
    AlreadyRevoked,
    APIKeyError,
    AuthenticationError,
    AuthorizationError,
    InsufficientScope,
    InvalidInput,
    LimitExceeded,
    OAuthError,
)
from .hashing import admin_key_digest
from .keys import looks_like_key
from .revocation import TokenDenyList
from .scopes import public
from .tokens import CLAIMS_ENVIRON_KEY, TokenAuthority, issue_token, register_token_views

if TYPE_CHECKING:
    from .extension import ExtensionState
    from .identity import VerifiedKey

METADATA_PATH = "/.well-known/oauth-authorization-server"
CLIENT_CREDENTIALS = "client_credentials"
# Names of RFC 7591 authentication methods, not secrets.
CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105
CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105
#: The key (or a token, where allowed) in ``Authorization: Bearer``/``Api-Key`` or ``X-API-Key``.
HEADER_CREDENTIAL = "bearer"
AUTH_METHODS = [CLIENT_SECRET_BASIC, CLIENT_SECRET_POST]
BASIC_CHALLENGE = 'Basic realm="api"'
FORM_MIMETYPE = "application/x-www-form-urlencoded"
METADATA_MAX_AGE = 300
REVOKED_REASON = "Revoked through the OAuth revocation endpoint (RFC 7009)."


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


def _state() -> ExtensionState:
    return cast("ExtensionState", current_app.extensions["apikeys"])


def _challenge(method: str) -> str:
    """The ``WWW-Authenticate`` of a 401 for a client that used ``method`` (RFC 6749 5.2)."""
    if method == HEADER_CREDENTIAL:
        return 'Bearer realm="api", error="invalid_token"'
    return BASIC_CHALLENGE


def invalid_client(detail: str, method: str = CLIENT_SECRET_BASIC) -> OAuthError:
    error = "invalid_token" if method == HEADER_CREDENTIAL else "invalid_client"
    return OAuthError(error, detail, status=401, challenge=_challenge(method))


def invalid_request(detail: str) -> OAuthError:
    return OAuthError("invalid_request", detail)


# -- reading the request ----------------------------------------------------------------------


def form_parameters(current_request: Request, *names: str) -> dict[str, str]:
    """The form fields ``names`` that were sent, each at most once (RFC 6749 3.2)."""
    if current_request.mimetype != FORM_MIMETYPE:
        raise invalid_request(f"Send the parameters as {FORM_MIMETYPE}.")
    form = current_request.form
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
    """Verify the client's credentials the way every request is verified, or refuse."""
    credentials = read_client_credentials(current_request)
    method = credentials.method
    digest = state.settings.admin_key_digest
    if method == HEADER_CREDENTIAL and digest is not None:
        if hmac.compare_digest(admin_key_digest(credentials.secret), digest):
            return Client(key=None, method=method)
    tokens = state.tokens
    if method != HEADER_CREDENTIAL and tokens is not None and tokens.is_token(credentials.secret):
        raise invalid_client("The client secret is the API key, not an access token.", method)
    try:
        if state.limits is not None:
            key = state.limits.authenticate(current_request, credentials.secret)
        else:
            key = authenticate(current_request, state, credentials.secret)
    except (AuthenticationError, AuthorizationError) as error:
        raise invalid_client(error.detail, method) from None
    except LimitExceeded as error:
        raise OAuthError(
            error.error_code, error.detail, status=429, headers=error.response_headers()
        ) from None
    except APIKeyError as error:
        code = "invalid_request" if error.code == 400 else error.error_code
        raise OAuthError(code, error.detail, status=error.code or 400) from None
    if key is None:  # pragma: no cover - a credential was given, so it was verified
        raise invalid_client("No client credentials.", method)
    if credentials.client_id is not None and not _names_key(credentials.client_id, key):
        raise invalid_client("The client id does not name the key sent as secret.", method)
    by_token = CLAIMS_ENVIRON_KEY in current_request.environ
    return Client(key=key, method=method, by_token=by_token)


# -- the token endpoint -----------------------------------------------------------------------


def is_client_credentials_request(current_request: Request) -> bool:
    """Whether a request to the token endpoint speaks OAuth 2.0 rather than the key exchange.

    It does when it authenticates with HTTP Basic, or names a grant type or client in its form
    (or names a grant type in JSON, which OAuth does not allow and is answered as OAuth).
    """
    authorization = current_request.environ.get("HTTP_AUTHORIZATION", "")
    if authorization.strip().partition(" ")[0].lower() == "basic":
        return True
    if current_request.mimetype == FORM_MIMETYPE:
        form = current_request.form
        return any(name in form for name in ("grant_type", "client_id", "client_secret"))
    if current_request.is_json and current_request.get_data(cache=True):
        body = current_request.get_json(silent=True)
        return isinstance(body, dict) and "grant_type" in body
    return False


def client_credentials_grant(current_request: Request, state: ExtensionState) -> Response:
    """RFC 6749 4.4: a token for the key the client authenticated with."""
    parameters = form_parameters(current_request, "grant_type", "scope")
    grant_type = parameters.get("grant_type")
    if not grant_type:
        raise invalid_request("The grant_type parameter is required (client_credentials).")
    if grant_type != CLIENT_CREDENTIALS:
        raise OAuthError(
            "unsupported_grant_type", f"Only the {CLIENT_CREDENTIALS} grant is supported."
        )
    client = authenticate_client(current_request, state)
    if client.key is None:
        raise OAuthError("unauthorized_client", "The bootstrap admin key cannot get tokens.")
    if client.by_token:
        raise invalid_client(
            "An access token cannot be exchanged for another: send the API key.", client.method
        )
    tokens = cast(TokenAuthority, state.tokens)
    scope = parameters.get("scope")
    try:
        issued = tokens.issue(client.key, scope if scope and scope.strip() else None)
    except (InsufficientScope, InvalidInput) as error:
        raise OAuthError("invalid_scope", _scope_refusal(error)) from None
    return _no_store(jsonify(issued))


@public  # to the hook, so that read-only keys may POST here; authenticated below instead
def token_endpoint() -> Response:
    """``POST APIKEYS_JWT_TOKEN_PATH``: the client credentials grant, or the key exchange."""
    current_request = request._get_current_object()  # type: ignore[attr-defined]
    if is_client_credentials_request(current_request):
        return client_credentials_grant(current_request, _state())
    return issue_token()


def _scope_refusal(error: APIKeyError) -> str:
    if isinstance(error, InvalidInput):
        return "; ".join(str(message) for messages in error.errors.values() for message in messages)
    return error.detail


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


# -- metadata, introspection, revocation ------------------------------------------------------


@public
def authorization_server_metadata() -> Response:
    """``GET /.well-known/oauth-authorization-server`` (RFC 8414)."""
    state = _state()
    settings = state.settings
    tokens = cast(TokenAuthority, state.tokens)
    document: dict[str, Any] = {
        "issuer": tokens.issuer,
        "token_endpoint": url_for("apikeys_tokens.issue_token", _external=True),
        "grant_types_supported": [CLIENT_CREDENTIALS],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        # No authorization endpoint: the client credentials grant needs none.
        "response_types_supported": [],
    }
    if tokens.public_jwks:
        document["jwks_uri"] = url_for("apikeys_tokens.jwks", _external=True)
    if settings.introspection_path:
        document["introspection_endpoint"] = url_for("apikeys_oauth.introspect", _external=True)
        document["introspection_endpoint_auth_methods_supported"] = AUTH_METHODS
    if settings.revocation_path:
        document["revocation_endpoint"] = url_for("apikeys_oauth.revoke", _external=True)
        document["revocation_endpoint_auth_methods_supported"] = AUTH_METHODS
    response = jsonify(document)
    response.cache_control.public = True
    response.cache_control.max_age = METADATA_MAX_AGE
    return response


def _describe_token(state: ExtensionState, token: str) -> tuple[VerifiedKey, dict[str, Any]]:
    """The issuing key of an access token the API would accept now, and the token's claims."""
    tokens = cast(TokenAuthority, state.tokens)
    scratch: dict[str, Any] = {}
    key = tokens.verify(token, scratch)
    claims = scratch[CLAIMS_ENVIRON_KEY]
    answer = {
        "token_type": "Bearer",
        "credential_type": "access_token",
        **{name: claims[name] for name in ("sub", "iat", "exp", "iss", "aud", "jti")},
    }
    return key, answer


def _describe_key(state: ExtensionState, token: str) -> tuple[VerifiedKey, dict[str, Any]]:
    key = state.service.verify_key(token)
    answer: dict[str, Any] = {"credential_type": "api_key", "sub": str(key.id)}
    if key.expires_at_timestamp is not None:
        answer["exp"] = int(key.expires_at_timestamp)
    return key, answer


def introspection(state: ExtensionState, client: Client, token: str) -> dict[str, Any]:
    """RFC 7662 2.2: what the token may do, or only ``{"active": false}``."""
    tokens = state.tokens
    try:
        if tokens is not None and tokens.is_token(token):
            key, answer = _describe_token(state, token)
        else:
            key, answer = _describe_key(state, token)
    except (AuthenticationError, AuthorizationError):
        return {"active": False}
    if not (client.key is None or client.key.organization.id == key.organization.id):
        return {"active": False}  # another organization's credential: not ours to describe
    return {
        "active": True,
        "scope": " ".join(sorted(key.scopes)),
        "client_id": str(key.id),
        "org": str(key.organization.id),
        "organization": key.organization.slug,
        "environment": key.environment,
        **answer,
    }


@public
def introspect() -> Response:
    """``POST APIKEYS_INTROSPECTION_PATH``: is this key or access token active, and for what?"""
    state = _state()
    current_request = request._get_current_object()  # type: ignore[attr-defined]
    token = form_parameters(current_request, "token", "token_type_hint").get("token")
    client = authenticate_client(current_request, state)
    required = state.settings.introspection_scope
    if client.key is not None and not client.key.has_scope(required):
        challenge = None
        if client.method == HEADER_CREDENTIAL:
            challenge = f'Bearer realm="api", error="insufficient_scope", scope="{required}"'
        raise OAuthError(
            "insufficient_scope",
            f"Introspection needs a credential with the {required} scope.",
            status=403,
            challenge=challenge,
        )
    if not token:
        raise invalid_request("The token parameter is required.")
    return _no_store(jsonify(introspection(state, client, token)))


def _revoke_access_token(state: ExtensionState, client: Client, token: str) -> None:
    tokens = cast(TokenAuthority, state.tokens)
    try:
        claims = tokens.decode(token)
        key_id, organization_id = uuid.UUID(claims["sub"]), uuid.UUID(claims["org"])
        jti, expires = str(claims["jti"]), float(claims["exp"])
    except (APIKeyError, ValueError, TypeError, AttributeError):
        return  # invalid or expired: nothing to revoke (RFC 7009 2.2)
    if not (client.owns(key_id) or client.administers(organization_id)):
        return
    if tokens.deny_list is not None:
        tokens.deny_list.revoke(jti, expires)
    if state.audit is not None:
        state.audit.record(
            "token.revoked",
            actor=client.caller.actor,
            organization_id=organization_id,
            api_key_id=key_id,
            details={"jti": jti},
        )


def _revoke_key(state: ExtensionState, client: Client, token: str) -> None:
    try:
        target = state.service.verify_key(token)
    except (AuthenticationError, AuthorizationError):
        return  # unknown, revoked already, or unusable: nothing to do (RFC 7009 2.2)
    # The key itself (sent as the key, not as one of its tokens), or an admin of its org.
    itself = client.owns(target.id) and not client.by_token
    if not (itself or client.administers(target.organization.id)):
        return
    try:
        state.service.revoke_key(target.id, reason=REVOKED_REASON, revoked_by=client.caller.actor)
    except AlreadyRevoked:
        pass  # revoked by a concurrent request: the outcome asked for


@public
def revoke() -> Response:
    """``POST APIKEYS_REVOCATION_PATH`` (RFC 7009): revoke a key or an access token.

    The answer is 200 whether the token was revoked, unknown, already dead, or not the
    caller's to revoke, so the endpoint tells nobody whether a credential exists.
    """
    state = _state()
    current_request = request._get_current_object()  # type: ignore[attr-defined]
    token = form_parameters(current_request, "token", "token_type_hint").get("token")
    client = authenticate_client(current_request, state)
    if not token:
        raise invalid_request("The token parameter is required.")
    tokens = state.tokens
    if tokens is not None and tokens.is_token(token):
        _revoke_access_token(state, client, token)
    elif looks_like_key(token):
        _revoke_key(state, client, token)
    return _no_store(Response(status=200))


def register_oauth_views(app: Flask, state: ExtensionState) -> None:
    """Mount the token endpoint and JWKS (``apikeys_tokens.*``) when tokens are on, and
    introspection, revocation and the metadata (``apikeys_oauth.*``).

    Also gives the token authority its deny-list, over the rate-limit storage when shared.
    """
    settings = state.settings
    tokens = state.tokens
    blueprint = Blueprint("apikeys_oauth", __name__)
    if tokens is not None:
        register_token_views(app, tokens, token_view=token_endpoint)

        def find_storage() -> tuple[Any, tuple[type[BaseException], ...]]:
            if state.limits is None:
                return None, ()
            counters = state.limits.counters
            return counters.storage, counters.errors

        tokens.deny_list = TokenDenyList(
            find_storage,
            answer_ttl=settings.cache_ttl,
            fail_open=settings.ratelimit_fail_open,
        )
        blueprint.add_url_rule(
            METADATA_PATH,
            "authorization_server_metadata",
            authorization_server_metadata,
            methods=["GET"],
        )
    if settings.introspection_path:
        blueprint.add_url_rule(
            settings.introspection_path, "introspect", introspect, methods=["POST"]
        )
    if settings.revocation_path:
        blueprint.add_url_rule(settings.revocation_path, "revoke", revoke, methods=["POST"])
    app.register_blueprint(blueprint)
