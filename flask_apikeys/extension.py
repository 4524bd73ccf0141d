"""The :class:`APIKeys` extension object and what ``init_app`` wires into an app."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any, TypeVar

from flask import Flask, has_request_context, request
from flask_sqlalchemy import SQLAlchemy

from . import (
    cli_maintenance,  # noqa: F401 - adds usage prune, backfill-rollups, key purge
    cost,
    logmask,
)
from .admin import make_admin_blueprint
from .audit import ChainBreak
from .cli import apikeys_cli
from .config import (
    load_settings,
    taken_from_environment,
    weakening_messages,
    write_defaults,
)
from .dashboard import make_dashboard_blueprint
from .environ import ERROR_ENVIRON_KEY
from .errors import APIKeyError
from .hooks import install_response_step, make_before_request_hook, make_response_step
from .identity import VerifiedKey
from .limiting.flask_limiter import key_func, limit_for_key
from .migrations import register_tables
from .models import APIKey, Organization, metadata
from .oauth import register_oauth_views
from .service import CreatedKey, KeyService
from .state import EXTENSION_NAME, ExtensionState, build_state, get_state

logger = logging.getLogger("flask_apikeys")
ErrorHandler = TypeVar("ErrorHandler", bound=Callable[[APIKeyError], Any])


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
        if EXTENSION_NAME in app.extensions:
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
        if settings.mask_keys_in_logs:
            logmask.install()
        state = build_state(app, self, settings, db, limiter or self._limiter)
        app.extensions[EXTENSION_NAME] = state
        before_request = make_before_request_hook(state)
        if before_request is not None:
            app.before_request(before_request)
        response_step = make_response_step(state)
        if response_step is not None:
            install_response_step(app, response_step)
        endpoints_before = set(app.view_functions)
        register_oauth_views(app, state)  # token endpoint, metadata, introspection, revocation
        if settings.admin_url_prefix:
            app.register_blueprint(make_admin_blueprint(settings.admin_url_prefix))
        if settings.dashboard_url_prefix:
            app.register_blueprint(make_dashboard_blueprint(settings.dashboard_url_prefix))
        # Exactly the endpoints we just added: Flask refuses another view under their names.
        state.own_endpoints = frozenset(set(app.view_functions) - endpoints_before)
        register_tables(db.metadata)
        app.cli.add_command(apikeys_cli)
        app.register_error_handler(APIKeyError, self._render_error)
        cost.install(app, settings.cost_table)

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
        return get_state()

    def create_all(self) -> None:
        """Create the extension's tables if they are missing (tests and quick starts).

        Production deployments use the migrations instead (``docs/migrations.rst``).
        """
        metadata.create_all(self.state.db.engine)

    def drop_all(self) -> None:
        """Drop the extension's tables."""
        metadata.drop_all(self.state.db.engine)

    def create_organization(
        self,
        name: str,
        email: str,
        plan: str = "free",
        *,
        slug: str | None = None,
        is_active: bool = True,
        monthly_request_limit: int | None = None,
        rate_limit_per_minute: int | None = None,
        max_api_keys: int | None = None,
        actor: str | None = None,
    ) -> Organization:
        """Create an organization; its slug comes from the name unless given.

        See :meth:`flask_apikeys.service.organizations.Organizations.create_organization`.
        """
        return self.service.organizations.create_organization(
            name,
            email,
            plan,
            slug=slug,
            is_active=is_active,
            monthly_request_limit=monthly_request_limit,
            rate_limit_per_minute=rate_limit_per_minute,
            max_api_keys=max_api_keys,
            actor=actor,
        )

    def get_organization(self, reference: Organization | uuid.UUID | str) -> Organization:
        """Find an organization by object, id or slug; raise ``OrganizationNotFound``.

        See :meth:`flask_apikeys.service.organizations.Organizations.get_organization`.
        """
        return self.service.organizations.get_organization(reference)

    def list_organizations(
        self, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[Organization], int]:
        """A page of organizations, oldest first, and how many there are in all.

        See :meth:`flask_apikeys.service.organizations.Organizations.list_organizations`.
        """
        return self.service.organizations.list_organizations(limit=limit, offset=offset)

    def update_organization(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        actor: str | None = None,
        **changes: Any,
    ) -> Organization:
        """Change an organization's name, email, plan, state or limit overrides.

        See :meth:`flask_apikeys.service.organizations.Organizations.update_organization`.
        """
        return self.service.organizations.update_organization(organization, actor=actor, **changes)

    def create_key(
        self,
        organization: Organization | uuid.UUID | str,
        name: str,
        environment: str = "live",
        scopes: Iterable[str] | str | None = None,
        *,
        description: str | None = None,
        expires_in_days: int | None = None,
        expires_at: datetime | None = None,
        rate_limit: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        roles: Iterable[str] | str | None = None,
        level: str | None = None,
        allowed_networks: Iterable[str] | str | None = None,
        granted_by: VerifiedKey | None = None,
        actor: str | None = None,
    ) -> CreatedKey:
        """Create a key; the returned :class:`CreatedKey` holds the full key, this once.

        See :meth:`flask_apikeys.service.lifecycle.KeyLifecycle.create_key`.
        """
        return self.service.keys.create_key(
            organization,
            name,
            environment,
            scopes,
            description=description,
            expires_in_days=expires_in_days,
            expires_at=expires_at,
            rate_limit=rate_limit,
            metadata=metadata,
            roles=roles,
            level=level,
            allowed_networks=allowed_networks,
            granted_by=granted_by,
            actor=actor,
        )

    def list_keys(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        include_revoked: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[APIKey], int]:
        """A page of an organization's keys, newest first (records only, never a secret).

        See :meth:`flask_apikeys.service.lifecycle.KeyLifecycle.list_keys`.
        """
        return self.service.keys.list_keys(
            organization, include_revoked=include_revoked, limit=limit, offset=offset
        )

    def get_key(
        self,
        key_id: uuid.UUID | str,
        *,
        organization: Organization | uuid.UUID | str | None = None,
    ) -> APIKey:
        """A key record by id; with ``organization``, another organization's key is not found.

        See :meth:`flask_apikeys.service.lifecycle.KeyLifecycle.get_key`.
        """
        return self.service.keys.get_key(key_id, organization=organization)

    def update_key(
        self,
        key_id: uuid.UUID | str,
        *,
        organization: Organization | uuid.UUID | str | None = None,
        granted_by: VerifiedKey | None = None,
        actor: str | None = None,
        **changes: Any,
    ) -> APIKey:
        """Change a key's name, description, scopes, roles, level, rate limit or metadata.

        See :meth:`flask_apikeys.service.lifecycle.KeyLifecycle.update_key`.
        """
        return self.service.keys.update_key(
            key_id, organization=organization, granted_by=granted_by, actor=actor, **changes
        )

    def revoke_key(
        self,
        key_id: uuid.UUID | str,
        *,
        reason: str | None = None,
        revoked_by: str | None = None,
        organization: Organization | uuid.UUID | str | None = None,
    ) -> APIKey:
        """Revoke a key for good; it is refused from the next request on.

        See :meth:`flask_apikeys.service.lifecycle.KeyLifecycle.revoke_key`.
        """
        return self.service.keys.revoke_key(
            key_id, reason=reason, revoked_by=revoked_by, organization=organization
        )

    def rotate_key(
        self,
        key_id: uuid.UUID | str,
        *,
        overlap_hours: float = 24,
        rotated_by: str | None = None,
        organization: Organization | uuid.UUID | str | None = None,
        granted_by: VerifiedKey | None = None,
    ) -> CreatedKey:
        """Replace a key with a new one that keeps its scopes, limits, metadata and lifetime.

        See :meth:`flask_apikeys.service.lifecycle.KeyLifecycle.rotate_key`.
        """
        return self.service.keys.rotate_key(
            key_id,
            overlap_hours=overlap_hours,
            rotated_by=rotated_by,
            organization=organization,
            granted_by=granted_by,
        )

    def verify_key(self, presented: str) -> VerifiedKey:
        """Authenticate a presented key, or raise the error that says why not.

        See :meth:`flask_apikeys.service.verification.Verification.verify_key`.
        """
        return self.service.verification.verify_key(presented)

    def seed(self) -> tuple[Organization, CreatedKey | None]:
        """Create "Default Organization" and a "Default Test Key" with scope ``*``, once.

        See :meth:`flask_apikeys.service.lifecycle.KeyLifecycle.seed`.
        """
        return self.service.keys.seed()

    def usage_stats(
        self,
        organization: Organization | uuid.UUID | str,
        *,
        start: date,
        end: date,
        key: uuid.UUID | str | None = None,
    ) -> dict[str, Any]:
        """Usage between ``start`` and ``end`` (excluded): totals, by day/endpoint/status, p50/p95.

        See :meth:`flask_apikeys.service.reports.UsageReports.usage_stats`.
        """
        return self.service.reports.usage_stats(organization, start=start, end=end, key=key)

    def monthly_usage(
        self, organization: Organization | uuid.UUID | str, month: str
    ) -> dict[str, Any]:
        """Usage of one calendar month (UTC), e.g. ``"2026-01"``.

        See :meth:`flask_apikeys.service.reports.UsageReports.monthly_usage`.
        """
        return self.service.reports.monthly_usage(organization, month)

    def close(self, app: Flask | None = None) -> None:
        """Write the app's queued usage rows and audit records, stop its writer thread and
        close the rate-limit storage connections the extension opened.

        Call it when an app is done (tests, scripts, apps built and dropped), with the app or
        inside its app context; calling it again does nothing. At interpreter exit it runs by
        itself. A request served after it is still recorded, written at once.
        """
        state = get_state(app)
        if state.writer is not None:
            state.writer.close()
        if state.limits is not None:
            state.limits.close()
        state.service.verification.lookup.close()

    def flush_usage(self) -> int:
        """Write the buffered usage rows now; return how many were written."""
        return self.state.flush_usage()

    def verify_audit(self) -> ChainBreak | None:
        """Check the audit trail's hash chain; ``None`` when intact, else the first break."""
        return self.state.verify_audit()

    def audit(self, event: str, *, actor: str | None, **fields: Any) -> None:
        """Add a record to the audit trail (e.g. an admin action with who did it)."""
        audit = self.state.audit
        if audit is not None:
            audit.record(event, actor=actor, **fields)

    #: Flask-Limiter key function and dynamic limit (see ``docs/ratelimits.rst``).
    key_func = staticmethod(key_func)
    limit_for_key = staticmethod(limit_for_key)
