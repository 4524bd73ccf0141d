"""A small but real app under test, built fresh for every test (no global app)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import (
    APIKeys,
    current_key,
    public,
    record_cost,
    require_any_scope,
    require_scopes,
)
from flask_apikeys.migrations import register_tables
from flask_apikeys.models import metadata as extension_metadata

from .routing import SharedRoutingFlask

_app_metadata: sa.MetaData | None = None


def app_metadata() -> sa.MetaData:
    """The ``db.metadata`` of the apps built here: the extension's tables, copied once.

    ``init_app`` copies the extension's tables into the app's metadata (for ``db.create_all``
    and ``flask db migrate``), about half the CPU of building an app: the apps below define no
    tables of their own, so they share one metadata holding those copies, and ``init_app``
    finds its tables already there. A test that adds a table to its app's metadata (a model of
    its own) stops the sharing: the next app gets a fresh metadata again.
    """
    global _app_metadata
    if _app_metadata is None or set(_app_metadata.tables) != set(extension_metadata.tables):
        _app_metadata = sa.MetaData()
        register_tables(_app_metadata)
    return _app_metadata


def create_app(database_url: str, **config: Any) -> tuple[Flask, SQLAlchemy, APIKeys]:
    """An app with a few protected routes, the extension wired the app-factory way."""
    app = SharedRoutingFlask(__name__)  # a plain Flask app, its URL rules built faster
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        **config,
    )
    db = SQLAlchemy(metadata=app_metadata())
    apikeys = APIKeys()
    db.init_app(app)
    apikeys.init_app(app, db=db)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/presentations")
    @require_scopes("presentations:read")
    def list_presentations() -> dict[str, Any]:
        return {"org": current_key.organization.slug, "key": str(current_key.id)}

    @app.post("/v1/presentations")
    @require_scopes("presentations:write")
    def create_presentation() -> tuple[dict[str, str], int]:
        return {"created": "yes"}, 201

    @app.post("/v1/generate/outline")
    @require_scopes("outline:generate", "presentations:write")
    def generate_outline() -> dict[str, str]:
        return {"outline": "…"}

    @app.post("/v1/generate/slides")
    @require_scopes("slides:generate")
    def generate_slides() -> dict[str, str]:
        record_cost(tokens=1200, cost_usd=0.0125)
        return {"slides": "…"}

    @app.get("/v1/media")
    @require_any_scope("images:read", "slides:read")
    def media() -> dict[str, str]:
        return {"media": "…"}

    @app.get("/v1/whoami")
    def whoami() -> dict[str, Any]:
        if not current_key:
            return {"anonymous": True}
        return {
            "key": str(current_key.id),
            "org": current_key.organization.slug,
            "scopes": sorted(current_key.scopes),
            "metadata": dict(current_key.metadata),
        }

    @app.route("/v1/items", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    def items() -> dict[str, Any]:
        return {"method": request.method, "scopes": sorted(current_key.scopes)}

    @app.get("/v1/open")
    @public
    def open_view() -> dict[str, str]:
        return {"public": "yes"}

    return app, db, apikeys


def tampered(key: str) -> str:
    """The key with its last character changed (never equal to the key itself)."""
    return key[:-1] + ("1" if key[-1] == "0" else "0")
