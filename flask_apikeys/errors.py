"""Every error the extension raises, and how it is rendered as ``application/problem+json``.

Each error is both an :class:`APIKeyError` (so one handler catches them all) and the werkzeug
HTTP exception of its status, so an app that already handles ``Unauthorized`` keeps working.
``error_code`` is the stable machine-readable name a client can branch on; ``detail`` is for
people. Service-layer errors (unknown organization, plan limit reached) are the same classes,
so the CLI prints them and the admin API returns them without translation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from flask import Response, has_request_context, request
from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnprocessableEntity,
)

from .environ import RAISED_ENVIRON_KEY
from .logmask import mask_secrets

PROBLEM_CONTENT_TYPE = "application/problem+json"
ERROR_TYPE_BASE = "https://flask-apikeys.readthedocs.io/en/latest/errors.html#"
#: Problem documents rendered, by error class, status, detail and members (at most this many).
MAX_RENDERED_BODIES = 256
_rendered_bodies: dict[tuple[Any, ...], bytes] = {}
#: What a fresh response already holds, so a header of that name replaces it.
_RENDERED_HEADERS = frozenset({"content-type", "content-length"})


class APIKeyError(HTTPException):
    """Base of every flask-apikeys error.

    :param detail: a sentence for people saying what is wrong and, where it helps, what to do.
    :param extra: more members for the problem document (e.g. ``required_scopes``).
    """

    error_code: ClassVar[str] = "api_key_error"
    title: ClassVar[str] = "API key error"
    #: The stored key a refusal is about, as ``(key id, organization id)``, when the credential
    #: matched one (revoked, expired, used from elsewhere): the audit record of the refused
    #: attempt belongs to that organization. Never part of the problem document.
    refused_key: tuple[Any, Any] | None = None

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(description=detail or self.title)
        self.detail = detail or self.title
        self.extra = extra
        if has_request_context():
            # The request itself, not the proxy's attribute lookup: errors are made per request.
            request._get_current_object().environ[RAISED_ENVIRON_KEY] = self  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return self.detail

    def about_key(self, key_id: Any, organization_id: Any) -> Self:
        """This error, noting the stored key it refuses (see :attr:`refused_key`)."""
        self.refused_key = (key_id, organization_id)
        return self

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        return {
            "type": ERROR_TYPE_BASE + self.error_code,
            "title": self.title,
            "status": self.code,
            "detail": self.detail,
            "code": self.error_code,
            **self.extra,
        }

    def response_headers(self) -> Mapping[str, str]:
        """Headers the status requires (``WWW-Authenticate``, ``Retry-After``)."""
        return {}

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        """Render as problem+json, also when werkzeug renders the exception itself."""
        response = Response(
            self._problem_body(), status=self.code, content_type=PROBLEM_CONTENT_TYPE
        )
        headers = response.headers
        for name, value in self.response_headers().items():
            # add() when the name is new (always, for ours): set() scans for an existing one.
            if name.lower() in _RENDERED_HEADERS:
                headers[name] = value
            else:
                headers.add(name, value)
        return response

    def _problem_body(self) -> bytes:
        """:meth:`problem` as JSON bytes, rendered once per distinct document: a client
        hammering past its limit or with a wrong key gets the same one many times a second."""
        if type(self).problem is not APIKeyError.problem:
            return json.dumps(self.problem()).encode()
        try:
            identity = (type(self), self.code, self.detail, *self.extra.items())
            body = _rendered_bodies.get(identity)
        except TypeError:  # an unhashable member (a list of scopes): rendered each time
            return json.dumps(self.problem()).encode()
        if body is None:
            body = json.dumps(self.problem()).encode()
            if len(_rendered_bodies) >= MAX_RENDERED_BODIES:
                _rendered_bodies.clear()
            _rendered_bodies[identity] = body
        return body


class AuthenticationError(APIKeyError, Unauthorized):
    """401: the request did not prove who it is."""

    def response_headers(self) -> Mapping[str, str]:
        if self.error_code == "missing_api_key":
            return {"WWW-Authenticate": 'Bearer realm="api"'}
        return {
            "WWW-Authenticate": f'Bearer realm="api", error="invalid_token", '
            f'error_description="{self.title}"'
        }


class MissingAPIKey(AuthenticationError):
    error_code = "missing_api_key"
    title = "API key required"


class InvalidAPIKey(AuthenticationError):
    error_code = "invalid_api_key"
    title = "Invalid API key"


class ExpiredAPIKey(AuthenticationError):
    error_code = "expired_api_key"
    title = "API key expired"


class RevokedAPIKey(AuthenticationError):
    error_code = "revoked_api_key"
    title = "API key revoked"


class InvalidToken(AuthenticationError):
    """An access token that is malformed, forged, for someone else, or whose key is gone."""

    error_code = "invalid_token"
    title = "Invalid access token"


class ExpiredToken(AuthenticationError):
    error_code = "expired_token"
    title = "Access token expired"


class AuthorizationError(APIKeyError, Forbidden):
    """403: the key is known but may not do this."""


class InsufficientScope(AuthorizationError):
    """403: the key or token lacks a scope; a Bearer credential also gets RFC 6750's challenge."""

    error_code = "insufficient_scope"
    title = "Insufficient scope"

    def response_headers(self) -> Mapping[str, str]:
        if not sent_bearer_credential():
            return {}
        # RFC 6750 section 3.1: name the scopes that would do. Scopes are plain tokens
        # (letters, digits, "_.-:*"), so they need no quoting inside the quoted string.
        required = self.extra.get("required_scopes") or self.extra.get("scopes_not_granted")
        scope = f', scope="{" ".join(required)}"' if required else ""
        return {
            "WWW-Authenticate": f'Bearer realm="api", error="insufficient_scope", '
            f'error_description="{self.title}"{scope}'
        }


def sent_bearer_credential() -> bool:
    """Whether the current request carries ``Authorization: Bearer …`` (RFC 6750)."""
    if not has_request_context():
        return False
    authorization: str = request.environ.get("HTTP_AUTHORIZATION", "")
    return authorization.strip().partition(" ")[0].lower() == "bearer"


class IPNotAllowed(AuthorizationError):
    error_code = "ip_not_allowed"
    title = "Address not allowed"


class OrganizationInactive(AuthorizationError):
    error_code = "organization_inactive"
    title = "Organization inactive"


class APIKeyInURL(APIKeyError, BadRequest):
    error_code = "api_key_in_url"
    title = "API key in URL"


class MalformedRequest(APIKeyError, BadRequest):
    """400: a body that is not JSON (the admin API reads JSON objects only)."""

    error_code = "invalid_json"
    title = "Malformed request body"


class RequestTooLarge(APIKeyError, RequestEntityTooLarge):
    """413: a body over the app's ``MAX_CONTENT_LENGTH``, where the extension reads one."""

    error_code = "request_too_large"
    title = "Request body too large"


class LimitExceeded(APIKeyError, TooManyRequests):
    """429, with ``Retry-After`` in whole seconds."""

    def __init__(self, detail: str | None = None, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = max(1, int(retry_after))

    def response_headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}

    def copy(self) -> Self:
        """The same error as a new object, without running ``__init__`` again.

        The limits hand one error to every request refused alike
        (:meth:`~flask_apikeys.limiting.RateLimits.check`); one that is raised must be the
        request's own, as raising gives it the request's traceback.
        """
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        if has_request_context():
            request._get_current_object().environ[RAISED_ENVIRON_KEY] = error  # type: ignore[attr-defined]
        return error


class RateLimitExceeded(LimitExceeded):
    error_code = "rate_limit_exceeded"
    title = "Rate limit exceeded"


class QuotaExceeded(LimitExceeded):
    error_code = "quota_exceeded"
    title = "Monthly quota exceeded"


class BackendUnavailable(APIKeyError, ServiceUnavailable):
    """503: the database or rate-limit storage could not be reached; the request is not let in."""

    error_code = "backend_unavailable"
    title = "Authentication backend unavailable"


class NotFoundError(APIKeyError, NotFound):
    error_code = "not_found"
    title = "Not found"


class OrganizationNotFound(NotFoundError):
    error_code = "organization_not_found"
    title = "Organization not found"


class APIKeyNotFound(NotFoundError):
    error_code = "api_key_not_found"
    title = "API key not found"


class InvalidInput(APIKeyError, UnprocessableEntity):
    """422: input that cannot be accepted; ``errors`` maps each bad field to its messages."""

    error_code = "invalid_input"
    title = "Invalid input"

    def __init__(
        self, detail: str | None = None, *, errors: Mapping[str, Any] | None = None
    ) -> None:
        # Field names and messages may repeat what the caller sent, a pasted key included:
        # masked, as in a log line, since clients and gateways log error documents.
        masked = _masked(dict(errors or {}))
        super().__init__(
            None if detail is None else mask_secrets(detail),
            **({"errors": masked} if masked else {}),
        )
        self.errors = masked


def _masked(value: Any) -> Any:
    """``value`` (error messages: text, lists and mappings of them) with every secret masked."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return {_masked(name): _masked(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


class KeyLimitReached(APIKeyError, Conflict):
    error_code = "key_limit_reached"
    title = "Key limit reached"


class AlreadyRevoked(APIKeyError, Conflict):
    error_code = "already_revoked"
    title = "API key already revoked"


class AlreadyRotated(APIKeyError, Conflict):
    error_code = "already_rotated"
    title = "API key already rotated"


class OAuthError(APIKeyError):
    """An error of the OAuth 2.0 endpoints (token, introspection, revocation).

    Rendered as RFC 6749 section 5.2 asks, ``{"error": …, "error_description": …}`` in
    ``application/json``, rather than as a problem document: OAuth clients such as Authlib and
    requests-oauthlib look for ``error`` to tell a refusal from a token. ``error`` is one of
    RFC 6749's codes (``invalid_request``, ``invalid_client``, ``unsupported_grant_type``,
    ``invalid_scope``, ``unauthorized_client``), RFC 6750's (``invalid_token``,
    ``insufficient_scope``), or the code of the extension error it stands for (a 429's
    ``rate_limit_exceeded``).

    :param error: the OAuth error code.
    :param status: the HTTP status (400 unless the code says otherwise).
    :param challenge: a ``WWW-Authenticate`` value (401s, and 403 ``insufficient_scope``).
    :param headers: more headers to keep (``Retry-After`` of a 429).
    """

    error_code = "oauth_error"
    title = "OAuth error"

    def __init__(
        self,
        error: str,
        detail: str,
        *,
        status: int = 400,
        challenge: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = status
        self.error = error
        self.challenge = challenge
        self.headers = dict(headers or {})

    def problem(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.detail}

    def response_headers(self) -> Mapping[str, str]:
        headers = dict(self.headers)
        if self.challenge is not None:
            headers["WWW-Authenticate"] = self.challenge
        # RFC 6749 5.1 and 5.2: neither a token nor a refusal is cached.
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
        return headers

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        response = Response(
            json.dumps(self.problem()), status=self.code, mimetype="application/json"
        )
        response.headers.update(self.response_headers())
        return response


def restore_required_headers(
    status: int, wsgi_headers: list[tuple[str, str]], environ: Mapping[str, Any]
) -> None:
    """Add the headers our error requires when an app's own error handler rendered it.

    Flask prefers a handler registered for a status code (``@app.errorhandler(429)``, as
    Flask-Limiter's docs show) over ours, and such a handler builds a response of its own.
    Called with the WSGI header list as the response starts (:mod:`flask_apikeys.hooks`).
    """
    raised = environ.get(RAISED_ENVIRON_KEY)
    if raised is None or status != raised.code:
        return
    present = {name.lower() for name, _ in wsgi_headers}
    for name, value in raised.response_headers().items():
        if name.lower() not in present:
            wsgi_headers.append((name, _single_line(value)))


def _single_line(value: str) -> str:
    """A header value with no line break (ours never have one; a WSGI list is not checked)."""
    return " ".join(value.splitlines())


class MethodNotAllowedError(APIKeyError, MethodNotAllowed):
    """405 under the admin API, with ``Allow`` listing the methods the path has."""

    error_code = "method_not_allowed"
    title = "Method not allowed"

    def __init__(self, detail: str | None = None, *, allowed: list[str]) -> None:
        super().__init__(detail, allowed=sorted(allowed))
        self.allowed = sorted(allowed)

    def response_headers(self) -> Mapping[str, str]:
        return {"Allow": ", ".join(self.allowed)}
