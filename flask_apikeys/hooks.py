"""The per-request pipeline of an app, in the order it runs.

``before_request`` (:func:`make_before_request_hook`):

1. public? — static files, ``@public`` views, the extension's own views and the configured
   public paths are left alone (:func:`is_public_request`, decided by endpoint, not URL);
2. authenticate — the credential is verified once per request
   (:func:`flask_apikeys.auth.authenticate`);
3. limits — failed-attempt block, quota, organization and key rate limits
   (:class:`flask_apikeys.limiting.RateLimits`), in :func:`authenticate_and_limit`;
4. read-only — a read-only key may only read (:func:`admit`).

As the response starts (:func:`make_response_step`, run around ``app.wsgi_app`` by
:func:`install_response_step`): the rate-limit headers, then the usage row
(:mod:`flask_apikeys.usage.rows`). The scope decorators run steps 2-4 themselves when the hook
did not (:mod:`flask_apikeys.decorators`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

from flask import Blueprint, Flask, Request, current_app, has_request_context, request

from .auth import authenticate
from .environ import LIMITED_ENVIRON_KEY, START_ENVIRON_KEY
from .errors import (
    APIKeyError,
    AuthenticationError,
    AuthorizationError,
    InsufficientScope,
    LimitExceeded,
    MissingAPIKey,
    restore_required_headers,
)
from .identity import VerifiedKey
from .limiting import headers
from .network import client_address
from .permissions import READ_ONLY, SAFE_METHODS
from .state import ExtensionState
from .usage.rows import make_usage_recorder

logger = logging.getLogger("flask_apikeys")


def make_before_request_hook(state: ExtensionState) -> Callable[[], None] | None:
    """The ``before_request`` hook of one app: let public requests through, authenticate the rest.

    Bound to the app's state so that the hot path resolves no ``current_app`` proxy, and the one
    hook that also notes when the request started, for the usage row. ``None`` when the
    extension is disabled (``APIKEYS_ENABLED = False``): there is nothing to do.
    """
    settings = state.settings
    if not settings.enabled:
        return None
    track_usage = settings.usage_tracking
    #: error class → the handler to call directly, or None when Flask must choose
    direct_handlers: dict[type[APIKeyError], Callable[[APIKeyError], Any] | None] = {}

    def authenticate_before_request() -> Any:
        current_request = request._get_current_object()  # type: ignore[attr-defined]
        if track_usage:
            current_request.environ[START_ENVIRON_KEY] = perf_counter()
        if (
            current_request.method == "OPTIONS" and flask_answers_options(current_request)
        ) or is_public_request(current_request, state):
            return None
        try:
            admitted = admission(current_request, state)
        except APIKeyError as error:
            handler = handler_for(error)
            if handler is None:
                raise
            # Answered here, so its traceback is of no use, and would keep a cycle alive (the
            # frames hold the environ, which holds the error) for the garbage collector.
            error.__traceback__ = None
            # What Flask would do, without unwinding through its exception handling (a refused
            # client must not cost more than a served one): after_request hooks still run.
            return handler(error)
        if isinstance(admitted, LimitExceeded):  # returned, not raised: answered the same way
            handler = handler_for(admitted)
            if handler is None:
                raise admitted.copy()
            return handler(admitted)
        return None

    def handler_for(error: APIKeyError) -> Callable[[APIKeyError], Any] | None:
        """Our handler for ``error``'s class, or ``None`` when Flask must route it."""
        error_class = type(error)
        if error_class not in direct_handlers:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
            direct_handlers[error_class] = sole_handler(app, error_class)
        return direct_handlers[error_class]

    return authenticate_before_request


def sole_handler(app: Flask, error_class: type[APIKeyError]) -> Callable[[Any], Any] | None:
    """The extension's error handler, if it is the only one an ``error_class`` can reach.

    ``None`` when the app or a blueprint registered its own handler for the class, its status
    or a base (``@app.errorhandler(401)``): the error is then raised for Flask to route.
    Handlers cannot be registered once an app has served a request, so the answer holds.
    """
    ours = app.error_handler_spec.get(None, {}).get(None, {}).get(APIKeyError)
    if ours is None:
        return None
    bases = error_class.__mro__
    for by_code in app.error_handler_spec.values():
        for handlers in by_code.values():
            for handled, handler in handlers.items():
                if handled in bases and handler != ours:
                    return None
    return app.ensure_sync(ours)


#: What the response step is called with: the status, the WSGI header list (which it may add
#: to) and the request's environ.
ResponseStep = Callable[[int, "headers.WSGIHeaders", dict[str, Any]], None]


def make_response_step(state: ExtensionState) -> ResponseStep | None:
    """What the extension adds to a response as it starts: rate-limit headers, the usage row.

    It puts back the headers of our errors that an app's own error handler dropped too. Run by
    :func:`install_response_step` once Flask has built the response and every
    ``after_request`` hook has run. ``None`` when the extension is off.
    """
    settings = state.settings
    if not settings.enabled:
        return None  # no request is authenticated or counted
    limits = state.limits
    limit_headers = settings.ratelimit_headers != "none"
    write_headers = None
    if limits is not None and limit_headers:
        write_headers = partial(headers.write_headers, ietf=settings.ratelimit_headers == "all")
    record_usage = None
    if settings.usage_tracking and state.writer is not None:
        record_usage = make_usage_recorder(state.writer, settings.trusted_proxies)
    # Flask-Limiter's refusals are described with our limits off too: it may do all the limiting.
    find_limiter = headers.registered_limiter if limits is None else limits.flask_limiter

    def respond(status: int, wsgi_headers: headers.WSGIHeaders, environ: dict[str, Any]) -> None:
        if status >= 400:
            restore_required_headers(status, wsgi_headers, environ)
            if status == 429 and has_request_context():
                headers.describe_other_refusal(
                    wsgi_headers, environ, find_limiter, limit_headers=limit_headers
                )
        if write_headers is not None:
            write_headers(status, wsgi_headers, environ)
        if record_usage is not None:
            record_usage(status, environ)

    return respond


def install_response_step(app: Flask, step: ResponseStep) -> None:
    """Run ``step`` on every response of ``app`` as it starts, around ``app.wsgi_app``.

    Where WSGI middleware works rather than in an ``after_request`` hook: Flask's dispatch of a
    hook, and werkzeug's checks of each header added to a ``Response`` and again when the
    header list is made, cost more than the work itself (``bench/README.md``). Flask calls
    ``start_response`` before it pops the request's context, so the step still sees the
    request. It never fails a response: an error of ours is logged, and the response is sent
    as the app made it.
    """
    inner = app.wsgi_app

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        def start_response_with_step(status: str, wsgi_headers: Any, exc_info: Any = None) -> Any:
            try:
                step(int(status[:3]), wsgi_headers, environ)
            except Exception:
                logger.exception("flask-apikeys could not add its headers or usage row")
            return start_response(status, wsgi_headers, exc_info)

        return inner(environ, start_response_with_step)

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]


#: How the hook treats an endpoint (see :func:`endpoint_access`).
SKIPPED = "skipped"  # static files, ``@public`` views, the extension's own views
SCOPED = "scoped"  # a view with ``@require_scopes``: always authenticated and limited
ORDINARY = "ordinary"  # authenticated unless a configured public path names it


def endpoint_access(endpoint: str, state: ExtensionState) -> str:
    """Whether the hook skips ``endpoint``, always checks it, or asks the public paths.

    Decided by the endpoint Flask matched, never by a URL prefix: an app route under the admin
    prefix or under ``/docs`` is the app's, and is authenticated like any other.
    """
    access = state.endpoint_access.get(endpoint)
    if access is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        view = app.view_functions.get(endpoint)
        if getattr(view, "_apikeys_scopes", None) is not None:
            access = SCOPED
        elif (
            endpoint in state.own_endpoints
            or getattr(view, "_apikeys_public", False)
            or is_static_view(app, endpoint, view)
        ):
            access = SKIPPED
        else:
            access = ORDINARY
        state.endpoint_access[endpoint] = access
    return access


def is_static_view(app: Flask, endpoint: str, view: Any) -> bool:
    """Flask's own static-file views: the app's ``static`` and a blueprint's ``send_static_file``.

    Not any endpoint *named* ``static``: a blueprint may have a view of that name.
    """
    if endpoint == "static":
        return app.has_static_folder
    return getattr(view, "__name__", None) == "send_static_file" and isinstance(
        getattr(view, "__self__", None), Blueprint
    )


def path_is_public(path: str, state: ExtensionState, rule: str | None = None) -> bool:
    """Whether a configured public path names ``path``: exactly, or below a ``/prefix/*``.

    A trailing slash counts only where the matched ``rule`` is that very path (``/health``
    configured, the app's route written ``/health/``): a route with variables (a catch-all
    ``/<path:p>``) would otherwise serve ``/health/`` or ``/health//`` without a key.
    """
    exact = state.public_exact_paths
    if path in exact or (rule == path and path[:-1] in exact and path.endswith("/")):
        return True
    return bool(state.public_path_prefixes) and path.startswith(state.public_path_prefixes)


def flask_answers_options(current_request: Request) -> bool:
    """Whether Flask answers this ``OPTIONS`` request itself, the view never running (its
    automatic answer, or a 404/405): a CORS preflight carries no credential, so it passes.

    A view that handles ``OPTIONS`` itself (``methods=["GET", "OPTIONS"]``, a ``MethodView``
    with ``options``) runs, and is authenticated like any other method: it may answer with
    what ``GET`` does.
    """
    rule = current_request.url_rule
    return rule is None or getattr(rule, "provide_automatic_options", False) is True


def is_public_request(current_request: Request, state: ExtensionState) -> bool:
    """Whether the hook leaves this request alone (see :func:`endpoint_access`).

    A request that matched no route gets 404 or 405 from Flask; it is authenticated like any
    other (so the app's routes cannot be probed without a key), except under the admin API's
    prefix, whose routes are documented in its OpenAPI document anyway.
    """
    rule = current_request.url_rule
    if rule is None:
        prefix = state.settings.admin_url_prefix
        path = current_request.path
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            return True
        return path_is_public(path, state, path)  # no view runs: one trailing slash may pass
    access = endpoint_access(rule.endpoint, state)
    if access == ORDINARY:
        return path_is_public(current_request.path, state, rule.rule)
    return access == SKIPPED


def admit(current_request: Request, state: ExtensionState) -> VerifiedKey | None:
    """Everything the hook does for a request that is not public: authenticate, limit, and
    refuse a read-only key's writes. ``None`` when no key was sent and that is allowed."""
    admitted = admission(current_request, state)
    if isinstance(admitted, LimitExceeded):
        raise admitted.copy()
    return admitted


def admission(
    current_request: Request, state: ExtensionState
) -> VerifiedKey | LimitExceeded | None:
    """:func:`admit`, returning the rate limits' or quota's 429 instead of raising it (other
    refusals are raised): the hook answers a client over its limit without an exception."""
    key = authenticate_and_check(current_request, state)
    if key is None:
        if not state.settings.allow_unauthenticated:
            raise MissingAPIKey(
                "Send your API key in the Authorization header (Bearer) or in X-API-Key."
            )
    elif isinstance(key, LimitExceeded):
        return key
    elif key.level == READ_ONLY and current_request.method not in SAFE_METHODS:
        raise InsufficientScope(
            f"This key is read-only: {current_request.method} is not allowed.",
            level=READ_ONLY,
        )
    return key


def authenticate_and_limit(
    current_request: Request,
    state: ExtensionState,
    credential: str | None = None,
    *,
    enforce_limits: bool = True,
) -> VerifiedKey | None:
    """:func:`~flask_apikeys.auth.authenticate`, then the rate limits and quota; a failed
    attempt counts toward the address's block instead. A refusal is raised (see
    :func:`authenticate_and_check`)."""
    key = authenticate_and_check(current_request, state, credential, enforce_limits=enforce_limits)
    if isinstance(key, LimitExceeded):
        raise key.copy()
    return key


def authenticate_and_check(
    current_request: Request,
    state: ExtensionState,
    credential: str | None = None,
    *,
    enforce_limits: bool = True,
) -> VerifiedKey | LimitExceeded | None:
    """:func:`authenticate_and_limit`, but the 429 of the key's (or address's) rate limits or
    quota is returned rather than raised; an authentication failure is still raised.

    Once per request (see :data:`~flask_apikeys.environ.LIMITED_ENVIRON_KEY`): the hook, a
    scope decorator and the token endpoint may all call it; only the first counts, later calls
    return the first one's key. Addresses that failed too often are refused before their
    credential is even looked at (:func:`~flask_apikeys.auth.refuse_blocked_address`).
    ``enforce_limits=False`` counts failed attempts only: the admin API applies its own budget
    instead. ``credential`` replaces the one in the headers (the OAuth client secret).
    """
    environ = current_request.environ
    limits = state.limits
    if limits is None or LIMITED_ENVIRON_KEY in environ:
        environ[LIMITED_ENVIRON_KEY] = True
        return authenticate(current_request, state, credential)
    environ[LIMITED_ENVIRON_KEY] = True
    settings = state.settings
    try:
        key = authenticate(current_request, state, credential)
    except (AuthenticationError, AuthorizationError) as error:
        # Every refused credential counts: a wrong one (401), and a right one used from
        # outside its networks or of an inactive organization (403), which no rate limit
        # reaches either (they apply to authenticated keys).
        if settings.failed_auth_limit and not isinstance(error, MissingAPIKey):
            limits.count_failure(client_address(environ, settings.trusted_proxies))
        raise
    if not enforce_limits:
        return key
    if key is not None:
        return limits.check(key, current_request) or key
    if settings.allow_unauthenticated:
        return limits.check_anonymous(current_request)
    return None
