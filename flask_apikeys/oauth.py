"""The OAuth 2.0 face of the extension, so standard clients and gateways work unchanged.

- The client credentials grant (RFC 6749 section 4.4) at the token endpoint: the client id
  names a key (its id, or its visible prefix ``pk_live_AbCd``) and the client secret *is* the
  key (see :mod:`flask_apikeys.client_auth`). The answer is section 5.1's, a refusal section
  5.2's (:class:`~flask_apikeys.errors.OAuthError`).
- Authorization-server metadata (RFC 8414) at ``/.well-known/oauth-authorization-server``.
- Token introspection (RFC 7662): may a key or access token be used, and for what? For callers
  holding ``APIKEYS_INTROSPECTION_SCOPE``, within their own organization.
- Revocation (RFC 7009) of a key, by itself or an admin of its organization, or of an access
  token (its ``jti`` goes on the deny-list of :mod:`flask_apikeys.revocation`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, cast

from flask import Blueprint, Flask, Request, Response, jsonify, request, url_for

from .bodies import read_body
from .client_auth import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    FORM_MIMETYPE,
    HEADER_CREDENTIAL,
    MAX_UNAUTHENTICATED_BODY,
    Client,
    authenticate_client,
    form_parameters,
    invalid_client,
    invalid_request,
    read_form,
)
from .decorators import public
from .environ import CLAIMS_ENVIRON_KEY
from .errors import (
    AlreadyRevoked,
    APIKeyError,
    AuthenticationError,
    AuthorizationError,
    InsufficientScope,
    InvalidAPIKey,
    InvalidInput,
    MissingAPIKey,
    OAuthError,
)
from .hooks import authenticate_and_limit
from .identity import VerifiedKey
from .keys import looks_like_key
from .oauth_routes import add_oauth_route
from .revocation import TokenDenyList
from .state import ExtensionState, get_state
from .tokens import JWKS_MAX_AGE, JWKS_PATH, TokenAuthority

METADATA_PATH = "/.well-known/oauth-authorization-server"
CLIENT_CREDENTIALS = "client_credentials"
AUTH_METHODS = [CLIENT_SECRET_BASIC, CLIENT_SECRET_POST]
METADATA_MAX_AGE = 300
REVOKED_REASON = "Revoked through the OAuth revocation endpoint (RFC 7009)."


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
        form = read_form(current_request)  # read before anyone is authenticated: capped
        return any(name in form for name in ("grant_type", "client_id", "client_secret"))
    # Read before anyone is authenticated: only a body as small as a token request is.
    length = current_request.content_length
    if not current_request.is_json or length is None or length > MAX_UNAUTHENTICATED_BODY:
        return False  # the key exchange answers it, once the key is verified
    raw = read_body(current_request)
    if raw:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested beyond the parser's stack
            return False  # the key exchange answers it (400/422), as any body that is not JSON
        return isinstance(body, dict) and "grant_type" in body
    return False


def client_credentials_grant(current_request: Request, state: ExtensionState) -> Response:
    """RFC 6749 4.4: a token for the key the client authenticated with."""
    parameters = form_parameters(current_request, "grant_type", "scope")
    grant_type = parameters.get("grant_type")
    if not grant_type:
        raise invalid_request("The grant_type parameter is required (client_credentials).")
    if grant_type != CLIENT_CREDENTIALS:
        # requests-oauthlib's auto_refresh_url sends a refresh grant even without a token.
        raise OAuthError(
            "unsupported_grant_type",
            f"Only the {CLIENT_CREDENTIALS} grant is supported; no refresh token is ever "
            f"issued: fetch a new token with {CLIENT_CREDENTIALS} when one expires.",
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
        return client_credentials_grant(current_request, get_state())
    return issue_token()


def _scope_refusal(error: APIKeyError) -> str:
    if isinstance(error, InvalidInput):
        return "; ".join(str(message) for messages in error.errors.values() for message in messages)
    return error.detail


def _no_store(response: Response) -> Response:
    """RFC 6749 5.1: a token (or anything about one) is never cached."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


# -- metadata, introspection, revocation ------------------------------------------------------


@public
def authorization_server_metadata() -> Response:
    """``GET /.well-known/oauth-authorization-server`` (RFC 8414)."""
    state = get_state()
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
    # Its URLs come from the request's host: a shared cache that does not key on it (or on
    # X-Forwarded-Host) would hand every client an attacker's token endpoint.
    response.cache_control.private = True
    response.cache_control.max_age = METADATA_MAX_AGE
    response.vary.update(("Host", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"))
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
    key = state.service.verification.verify_key(token)
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
    # What only the gateway can apply, knowing where the client is and what it asks for: the
    # key's networks, and its level (a read-only key may use safe methods only).
    if key.allowed_networks:
        answer["allowed_networks"] = [str(network) for network in key.allowed_networks]
    if key.level is not None:
        answer["level"] = key.level
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
    state = get_state()
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
        target = state.service.verification.verify_key(token)
    except (AuthenticationError, AuthorizationError):
        return  # unknown, revoked already, or unusable: nothing to do (RFC 7009 2.2)
    # The key itself (sent as the key, not as one of its tokens), or an admin of its org.
    itself = client.owns(target.id) and not client.by_token
    if not (itself or client.administers(target.organization.id)):
        return
    try:
        state.service.keys.revoke_key(
            target.id, reason=REVOKED_REASON, revoked_by=client.caller.actor
        )
    except AlreadyRevoked:
        pass  # revoked by a concurrent request: the outcome asked for


@public
def revoke() -> Response:
    """``POST APIKEYS_REVOCATION_PATH`` (RFC 7009): revoke a key or an access token.

    The answer is 200 whether the token was revoked, unknown, already dead, or not the
    caller's to revoke, so the endpoint tells nobody whether a credential exists.
    """
    state = get_state()
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
        add_oauth_route(
            blueprint,
            METADATA_PATH,
            "authorization_server_metadata",
            authorization_server_metadata,
            "GET",
        )
    if settings.introspection_path:
        add_oauth_route(blueprint, settings.introspection_path, "introspect", introspect, "POST")
    if settings.revocation_path:
        add_oauth_route(blueprint, settings.revocation_path, "revoke", revoke, "POST")
    app.register_blueprint(blueprint)


# -- the token views ------------------------------------------------------------------------


def _requested_scope(current_request: Request) -> str | None:
    """``scope`` from a JSON body (``{"scope": "a b"}``) or a form; ``None`` when not given."""
    if current_request.mimetype == FORM_MIMETYPE:
        return read_form(current_request).get("scope")
    raw = read_body(current_request)
    if not raw:
        return None
    body = None
    if current_request.is_json:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested beyond the parser's stack
            body = None
    if not isinstance(body, dict):
        raise InvalidInput('Send no body, or a JSON object such as {"scope": "a:read b:read"}.')
    scope = body.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise InvalidInput(errors={"scope": ["a space-separated string of scopes"]})
    return scope


@public  # to the hook, so that read-only keys may POST here; authenticated below instead
def issue_token() -> Response:
    """``POST APIKEYS_JWT_TOKEN_PATH``: trade the API key sent for an access token."""
    state = get_state()
    current_request = request._get_current_object()  # type: ignore[attr-defined]
    key = authenticate_and_limit(current_request, state)
    if key is None:
        raise MissingAPIKey("Send your API key in the Authorization header to get a token.")
    if CLAIMS_ENVIRON_KEY in current_request.environ:
        raise InvalidAPIKey("An access token cannot be exchanged for another: send the API key.")
    tokens = cast(TokenAuthority, state.tokens)
    return _no_store(jsonify(tokens.issue(key, _requested_scope(current_request))))


@public
def jwks() -> Response:
    """``GET /.well-known/jwks.json``: the public keys that verify this service's tokens."""
    tokens = cast(TokenAuthority, get_state().tokens)
    response = jsonify({"keys": tokens.public_jwks})
    response.cache_control.public = True
    response.cache_control.max_age = JWKS_MAX_AGE
    return response


def register_token_views(
    app: Flask, tokens: TokenAuthority, token_view: Callable[[], Response] = issue_token
) -> None:
    """Add the token route (and the JWKS route, for public keys) to ``app`` (``init_app``).

    ``token_view`` answers the token route: :func:`issue_token`, or the OAuth endpoint that
    also speaks the client credentials grant (:func:`token_endpoint`).
    """
    blueprint = Blueprint("apikeys_tokens", __name__)
    add_oauth_route(blueprint, tokens.token_path, "issue_token", token_view, "POST")
    if tokens.public_jwks:
        add_oauth_route(blueprint, JWKS_PATH, "jwks", jwks, "GET")
    app.register_blueprint(blueprint)
