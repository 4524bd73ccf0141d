"""An "AI backend" API protected by flask-apikeys, built with the app-factory pattern.

Reads ``DATABASE_URL`` (default: SQLite in the instance folder) and ``REDIS_URL`` (default:
in-memory rate limits) from the environment.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, current_key, require_scopes

db = SQLAlchemy()
migrate = Migrate()
apikeys = APIKeys()
MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
DASHBOARD_URL_PREFIX = "/dashboard"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the example app; ``config`` overrides anything read from the environment."""
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "DATABASE_URL", f"sqlite:///{os.path.join(app.instance_path, 'example.sqlite')}"
        ),
        APIKEYS_RATELIMIT_STORAGE_URI=os.environ.get("REDIS_URL", "memory://"),
        # For the example only: a real deployment reads its secret from its secret store.
        APIKEYS_HASH_SECRET=os.environ.get("APIKEYS_HASH_SECRET", "example-only-not-a-real-secret"),
        # The browser dashboard: sign in there with the admin key printed at the first start.
        APIKEYS_DASHBOARD_URL_PREFIX=DASHBOARD_URL_PREFIX,
    )
    app.config.update(config or {})
    db.init_app(app)
    # Flask-Migrate first: init_app then adds the extension's migrations to it.
    migrate.init_app(app, db, directory=MIGRATIONS)
    apikeys.init_app(app, db=db)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/generate/outline")
    @require_scopes("outline:generate")
    def generate_outline() -> dict[str, Any]:
        return {"organization": current_key.organization.slug, "outline": ["Intro", "Details"]}

    @app.get("/v1/presentations")
    @require_scopes("presentations:read")
    def list_presentations() -> dict[str, Any]:
        return {"organization": current_key.organization.slug, "presentations": []}

    @app.post("/v1/presentations")
    @require_scopes("presentations:write")
    def create_presentation() -> tuple[dict[str, Any], int]:
        return {"organization": current_key.organization.slug, "created": True}, 201

    return app
