"""A small but real app under test, built fresh for every test (no global app)."""

from __future__ import annotations

from typing import Any

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

from .routing import SharedRoutingFlask


def create_app(database_url: str, **config: Any) -> tuple[Flask, SQLAlchemy, APIKeys]:
    """An app with a few protected routes, the extension wired the app-factory way."""
    app = SharedRoutingFlask(__name__)  # a plain Flask app, its URL rules built faster
    app.config.update(
        TESTING=True,
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        **config,
    )
    db = SQLAlchemy()
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
