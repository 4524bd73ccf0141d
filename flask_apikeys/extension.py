"""The :class:`APIKeys` extension object and what ``init_app`` wires into an app."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, has_request_context, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from . import cost, logmask, signals
from .admin import make_admin_blueprint
from .audit import AuditTrail, ChainBreak
from .auth import make_before_request_hook
from .cache import VerifiedKeyCache
from .cli import apikeys_cli
from .config import (
    Settings,
    load_settings,
    taken_from_environment,
    weakening_messages,
    write_defaults,
)
from .errors import APIKeyError, restore_required_headers
from .hashing import KeyHasher
from .limiting import RateLimits, key_func, limit_for_key
from .migrations import register_tables
from .models import metadata
from .network import client_address
from .oauth import register_oauth_views
from .service import KeyService
from .tokens import TokenAuthority
from .usage import ERROR_ENVIRON_KEY, UsageWriter, attempt_record, make_usage_recorder

logger = logging.getLogger("flask_apikeys")
ErrorHandler = TypeVar("ErrorHandler", bound=Callable[[APIKeyError], Any])


@dataclass
class ExtensionState:
    """Everything flask-apikeys keeps for one app, in ``app.extensions["apikeys"]``."""

    extension: APIKeys
    settings: Settings
    db: SQLAlchemy
    hasher: KeyHasher
    cache: VerifiedKeyCache
    service: KeyService
    #: ``APIKEYS_PUBLIC_PATHS`` entries matched exactly (trailing slash ignored).
    public_exact_paths: frozenset[str]
    #: ``/prefix/*`` entries of ``APIKEYS_PUBLIC_PATHS``, as ``"/prefix/"``.
    public_path_prefixes: tuple[str, ...]
    #: endpoint → how the hook treats it (:func:`~flask_apikeys.auth.endpoint_access`), filled
    #: on first sight of each endpoint.
    endpoint_access: dict[str, str] = field(default_factory=dict)
    #: The extension's own endpoints (admin API, token views), which authenticate themselves.
    own_endpoints: frozenset[str] = frozenset()
    #: Buffered writer of usage rows and refused-attempt audit records.
    writer: UsageWriter | None = None
    #: The audit trail (``None`` when ``APIKEYS_AUDIT`` is off).
    audit: AuditTrail | None = None
    #: Rate limits and quotas (``None`` when ``APIKEYS_RATELIMIT_ENABLED`` is off).
    limits: RateLimits | None = None
    #: JWT access tokens (``None`` unless ``APIKEYS_JWT_ENABLED``).
    tokens: TokenAuthority | None = None

    def record_refusal(self, error: APIKeyError, environ: dict[str, Any], presented: str) -> None:
        """Queue an audit record for a refused key and send :data:`~.signals.credential_refused`
        (called by the hook; prefix and hint only)."""
        if self.audit is not None and self.writer is not None:
            address = client_address(environ, self.settings.trusted_proxies)
            self.writer.add_audit(attempt_record(error, environ, address, presented))
        if signals.credential_refused.receivers:
            signals.send_credential_refusal(error, environ, presented, self.settings)


def _delegate(name: str) -> Callable[..., Any]:
    """An :class:`APIKeys` method that calls the current app's :class:`KeyService` method."""
    method = getattr(KeyService, name)

    @functools.wraps(method)
    def call(self: APIKeys, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.service, name)(*args, **kwargs)

    return call


class APIKeys:
    """API-key authentication for a Flask app.

    :param app: the app, or ``None`` to call :meth:`init_app` later (app factories).
    :param db: the app's Flask-SQLAlchemy object; defaults to the one registered on the app.
    :param limiter: an existing Flask-Limiter ``Limiter`` to share storage with.
    """

    def __init__(
        self, app: Flask | None = None, *, db: SQLAlchemy | None = None, limiter: Any = None
    ) -> None:
        self._db = db
        self._limiter = limiter
        self._error_handler: Callable[[APIKeyError], Any] | None = None
        if app is not None:
            self.init_app(app, db=db, limiter=limiter)

    def init_app(self, app: Flask, *, db: SQLAlchemy | None = None, limiter: Any = None) -> None:
        """Read and check the configuration, then register the hook and error handler."""
        if "apikeys" in app.extensions:
            raise RuntimeError(
                "flask-apikeys is already initialised on this app. Call init_app once per app; "
                "to change settings, change app.config before that call."
            )
        db = db or self._db or app.extensions.get("sqlalchemy")
        if db is None:
            raise RuntimeError(
                "flask-apikeys needs Flask-SQLAlchemy: pass db=your_sqlalchemy to APIKeys() or "
                "init_app(), or call db.init_app(app) first."
            )
        settings = load_settings(app.config)
        from_environment = taken_from_environment(app.config)
        if from_environment:
            logger.info(
                "flask-apikeys settings taken from the environment: %s",
                ", ".join(from_environment),
            )
        for message in weakening_messages(settings, from_environment):
            logger.warning("SECURITY: %s. Unset it unless that is what you want.", message)
        write_defaults(app.config)
        if not settings.hash_secret and not (app.debug or app.testing):
            logger.warning(
                "APIKEYS_HASH_SECRET is not set: keys are stored as plain SHA-256. Set a secret "
                "so that a leaked database alone cannot be used to test guessed keys."
            )
        hasher = KeyHasher(settings.hash_schemes, settings.hash_secret)
        cache = VerifiedKeyCache(settings.cache_ttl)
        service = KeyService(
            session=lambda: cast(Session, db.session), settings=settings, hasher=hasher, cache=cache
        )
        tokens = TokenAuthority(settings, service) if settings.jwt_enabled else None
        # Exact unless written as a prefix: "/docs" must not make an app's /docs/<id> public.
        exact_paths = frozenset(
            path.rstrip("/") or "/" for path in settings.public_paths if not path.endswith("/*")
        )
        prefixes = tuple(path[:-1] for path in settings.public_paths if path.endswith("/*"))
        state = app.extensions["apikeys"] = ExtensionState(
            extension=self,
            settings=settings,
            db=db,
            hasher=hasher,
            cache=cache,
            service=service,
            public_exact_paths=exact_paths,
            public_path_prefixes=prefixes,
            tokens=tokens,
        )
        self._install_usage_and_audit(app, state)
        if settings.ratelimit_enabled:
            state.limits = RateLimits(state, limiter or self._limiter)
            registered = next(iter(app.extensions.get("limiter") or ()), None)
            state.limits.check_header_settings(app.config, registered)
        before_request = make_before_request_hook(state)
        if before_request is not None:
            app.before_request(before_request)
        after_request = make_after_request_hook(state)
        if after_request is not None:
            app.after_request(after_request)
        endpoints_before = set(app.view_functions)
        register_oauth_views(app, state)  # token endpoint, metadata, introspection, revocation
        if settings.admin_url_prefix:
            app.register_blueprint(make_admin_blueprint(settings.admin_url_prefix))
        # Exactly the endpoints we just added: Flask refuses another view under their names.
        state.own_endpoints = frozenset(set(app.view_functions) - endpoints_before)
        register_tables(db.metadata)
        app.cli.add_command(apikeys_cli)
        app.register_error_handler(APIKeyError, self._render_error)
        cost.install(app, settings.raw["APIKEYS_COST_TABLE"])  # after our after_request hook

    def _install_usage_and_audit(self, app: Flask, state: ExtensionState) -> None:
        settings, db = state.settings, state.db
        if settings.mask_keys_in_logs:
            logmask.install()

        def connect() -> Any:
            """A transaction on the app's engine, usable from the writer thread too."""
            with app.app_context():
                engine = db.engine
            return engine.begin()

        state.writer = UsageWriter(
            connect,
            synchronous=settings.usage_mode == "sync",
            flush_interval=settings.usage_flush_interval,
            batch_size=settings.usage_batch_size,
            max_queue=settings.usage_max_queue,
        )
        if settings.audit:
            state.audit = AuditTrail(connect)
            state.audit.subscribe(app)

    # -- customisation ------------------------------------------------------------------------

    def error_handler(self, handler: ErrorHandler) -> ErrorHandler:
        """Decorate a function that turns an :class:`APIKeyError` into a response.

        By default errors are ``application/problem+json`` documents.
        """
        self._error_handler = handler
        return handler

    def _render_error(self, error: APIKeyError) -> Any:
        if has_request_context():
            request.environ[ERROR_ENVIRON_KEY] = error  # for the usage row
        if self._error_handler is not None:
            return self._error_handler(error)
        return error.get_response()

    # -- the Python API -----------------------------------------------------------------------

    @property
    def service(self) -> KeyService:
        """The current app's service layer (inside an app context)."""
        return self.state.service

    @property
    def state(self) -> ExtensionState:
        """The current app's :class:`ExtensionState`."""
        try:
            return cast(ExtensionState, current_app.extensions["apikeys"])
        except KeyError:
            raise RuntimeError(
                "flask-apikeys is not initialised on this app: call apikeys.init_app(app)."
            ) from None

    def create_all(self) -> None:
        """Create the extension's tables if they are missing (tests and quick starts).

        Production deployments use the migrations instead (``docs/migrations.rst``).
        """
        metadata.create_all(self.state.db.engine)

    def drop_all(self) -> None:
        """Drop the extension's tables."""
        metadata.drop_all(self.state.db.engine)

    create_organization = _delegate("create_organization")
    update_organization = _delegate("update_organization")
    update_key = _delegate("update_key")
    get_organization = _delegate("get_organization")
    list_organizations = _delegate("list_organizations")
    create_key = _delegate("create_key")
    list_keys = _delegate("list_keys")
    get_key = _delegate("get_key")
    revoke_key = _delegate("revoke_key")
    rotate_key = _delegate("rotate_key")
    verify_key = _delegate("verify_key")
    seed = _delegate("seed")
    usage_stats = _delegate("usage_stats")
    monthly_usage = _delegate("monthly_usage")

    def close(self, app: Flask | None = None) -> None:
        """Write the app's queued usage rows and audit records, stop its writer thread and
        close the rate-limit storage connections the extension opened.

        Call it when an app is done (tests, scripts, apps built and dropped), with the app or
        inside its app context; calling it again does nothing. At interpreter exit it runs by
        itself. A request served after it is still recorded, written at once.
        """
        target = app if app is not None else current_app
        state = cast("ExtensionState | None", target.extensions.get("apikeys"))
        if state is None:
            raise RuntimeError(
                "flask-apikeys is not initialised on this app: call apikeys.init_app(app)."
            )
        if state.writer is not None:
            state.writer.close()
        if state.limits is not None:
            state.limits.close()

    def flush_usage(self) -> int:
        """Write the buffered usage rows now; return how many were written."""
        writer = self.state.writer
        return 0 if writer is None else writer.flush()

    def verify_audit(self) -> ChainBreak | None:
        """Check the audit trail's hash chain; ``None`` when intact, else the first break."""
        audit = self.state.audit
        if audit is None:
            raise RuntimeError("The audit trail is off (APIKEYS_AUDIT = False).")
        return audit.verify()

    def audit(self, event: str, *, actor: str | None, **fields: Any) -> None:
        """Add a record to the audit trail (e.g. an admin action with who did it)."""
        audit = self.state.audit
        if audit is not None:
            audit.record(event, actor=actor, **fields)

    #: Flask-Limiter key function and dynamic limit (see ``docs/ratelimits.rst``).
    key_func = staticmethod(key_func)
    limit_for_key = staticmethod(limit_for_key)


def make_after_request_hook(state: ExtensionState) -> Callable[[Response], Response] | None:
    """The one ``after_request`` hook of an app: rate-limit headers, then the usage row.

    One hook rather than one per feature: each hook costs Flask a lookup and a call on every
    request, and each would look the request up again. It also puts back the headers of our
    errors that an app's own error handler dropped. ``None`` when the extension is off.
    """
    settings = state.settings
    if not settings.enabled:
        return None  # no request is authenticated or counted
    limits = state.limits
    write_headers = None
    if limits is not None and settings.ratelimit_headers != "none":
        write_headers = limits.write_headers
    record_usage = make_usage_recorder(state) if settings.usage_tracking else None

    def after_request(response: Response) -> Response:
        current_request = request._get_current_object()  # type: ignore[attr-defined]
        environ = current_request.environ
        if response.status_code >= 400:
            restore_required_headers(response, environ)
            if response.status_code == 429 and limits is not None:
                limits.describe_other_refusal(response, environ)
        if write_headers is not None:
            write_headers(response, environ)
        if record_usage is not None:
            record_usage(response, current_request, environ)
        return response

    return after_request


def problem_response(error: APIKeyError) -> Response:
    """The default rendering of an error, for custom handlers that want to wrap it."""
    return error.get_response()
