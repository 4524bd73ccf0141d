"""What flask-apikeys keeps for one app (``app.extensions["apikeys"]``), and its one accessor.

It sits above the parts it holds (service, limits, writer, audit trail, tokens) and below
everything that serves a request (:mod:`~flask_apikeys.auth`, :mod:`~flask_apikeys.hooks`,
the admin API, the OAuth views, the CLI), which reach the state through :func:`get_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import sqlalchemy as sa
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from limits.storage import RedisStorage
from sqlalchemy.orm import Session

from . import signals
from .audit import AuditTrail, ChainBreak, attempt_record
from .cache import VerifiedKeyCache
from .cache_generation import FileGeneration, Generations, RedisGeneration
from .config import Settings
from .errors import APIKeyError
from .hashing import KeyHasher
from .limiting.rate_limits import RateLimits
from .network import client_address
from .service import KeyService
from .tokens import TokenAuthority
from .usage.retention import WriterPruning
from .usage.writer import UsageWriter

EXTENSION_NAME = "apikeys"


@dataclass
class ExtensionState:
    """Everything flask-apikeys keeps for one app, in ``app.extensions["apikeys"]``."""

    #: The :class:`~flask_apikeys.APIKeys` object that initialised the app.
    extension: object
    settings: Settings
    db: SQLAlchemy
    hasher: KeyHasher
    cache: VerifiedKeyCache
    service: KeyService
    #: ``APIKEYS_PUBLIC_PATHS`` entries matched exactly (trailing slash ignored).
    public_exact_paths: frozenset[str]
    #: ``/prefix/*`` entries of ``APIKEYS_PUBLIC_PATHS``, as ``"/prefix/"``.
    public_path_prefixes: tuple[str, ...]
    #: endpoint → how the hook treats it (:func:`~flask_apikeys.hooks.endpoint_access`),
    #: filled on first sight of each endpoint.
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
            # Repeats of one attempt until the next flush become one record with their count.
            # The credential by its (keyed, per-process) hash only: no raw key is kept here.
            attempt = (
                error.error_code,
                address,
                environ.get("HTTP_USER_AGENT"),
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                hash(presented),
            )
            self.writer.add_refusal(
                attempt, partial(attempt_record, error, environ, address, presented)
            )
        if signals.credential_refused.receivers:
            signals.send_credential_refusal(error, environ, presented, self.settings)

    def flush_usage(self) -> int:
        """Write the buffered usage rows now; return how many were written."""
        return 0 if self.writer is None else self.writer.flush()

    def verify_audit(self) -> ChainBreak | None:
        """Check the audit trail's hash chain; ``None`` when intact, else the first break."""
        if self.audit is None:
            raise RuntimeError("The audit trail is off (APIKEYS_AUDIT = False).")
        return self.audit.verify()


def get_state(app: Flask | None = None) -> ExtensionState:
    """The state of ``app`` (by default the current app), or a ``RuntimeError`` saying why not."""
    target = current_app if app is None else app
    try:
        return cast(ExtensionState, target.extensions[EXTENSION_NAME])
    except KeyError:
        raise RuntimeError(
            "flask-apikeys is not initialised on this app: call apikeys.init_app(app)."
        ) from None


def build_state(
    app: Flask, extension: object, settings: Settings, db: SQLAlchemy, limiter: Any
) -> ExtensionState:
    """The parts of one app, built from its settings (``init_app``)."""
    hasher = KeyHasher(settings.hash_schemes, settings.hash_secret)
    generation = FileGeneration.for_database(database_identity(app))
    cache = VerifiedKeyCache(
        settings.cache_ttl, generation=generation, check_interval=settings.cache_check_interval
    )
    service = KeyService(
        session=lambda: cast(Session, db.session), settings=settings, hasher=hasher, cache=cache
    )
    # Exact unless written as a prefix: "/docs" must not make an app's /docs/<id> public.
    exact_paths = frozenset(
        path.rstrip("/") or "/" for path in settings.public_paths if not path.endswith("/*")
    )
    prefixes = tuple(path[:-1] for path in settings.public_paths if path.endswith("/*"))

    def connect() -> Any:
        """A transaction on the app's engine, usable from the writer thread too."""
        with app.app_context():
            engine = db.engine
        return engine.begin()

    state = ExtensionState(
        extension=extension,
        settings=settings,
        db=db,
        hasher=hasher,
        cache=cache,
        service=service,
        public_exact_paths=exact_paths,
        public_path_prefixes=prefixes,
        tokens=TokenAuthority(settings, service) if settings.jwt_enabled else None,
        writer=UsageWriter(
            connect,
            synchronous=settings.usage_mode == "sync",
            flush_interval=settings.usage_flush_interval,
            batch_size=settings.usage_batch_size,
            max_queue=settings.usage_max_queue,
            raw_rows=settings.usage_raw_rows,
        ),
    )
    if settings.usage_prune_in_writer and state.writer is not None:
        state.writer.after_flush = WriterPruning(
            connect, settings.usage_retention_days, settings.usage_rollup_retention_days
        )
    if settings.audit:
        state.audit = AuditTrail(connect)
        state.audit.subscribe(app)
    if settings.ratelimit_enabled:
        state.limits = RateLimits(settings, limiter, database=db)
        registered = next(iter(app.extensions.get("limiter") or ()), None)
        state.limits.check_header_settings(app.config, registered)
        limits = state.limits

        def find_storage() -> tuple[Any, tuple[type[BaseException], ...]]:
            storage = limits.counters.storage
            if not isinstance(storage, RedisStorage):
                return None, ()  # in-process counters: the file reaches the host's processes
            return storage, limits.counters.errors

        cache.generation = Generations([generation, RedisGeneration(find_storage)])
    return state


def database_identity(app: Flask) -> str:
    """What names the app's key database among the processes of a host: its URL(s), without
    their passwords (the name of a file anyone on the host can list is made from it)."""
    binds = app.config.get("SQLALCHEMY_BINDS") or {}
    return repr(
        (
            _without_password(app.config.get("SQLALCHEMY_DATABASE_URI")),
            sorted((str(name), _without_password(bind)) for name, bind in binds.items()),
        )
    )


def _without_password(database: Any) -> str:
    """A database URL (a string, a URL object, or engine options with ``url``) as text
    without its password."""
    if isinstance(database, dict):
        database = database.get("url")
    if database is None:
        return ""
    try:
        url = sa.make_url(database)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        return "unparsable"  # no engine connects with it either
    return url.render_as_string(hide_password=True)
