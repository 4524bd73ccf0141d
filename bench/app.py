"""The app the server benchmarks run under gunicorn, configured by environment variables.

``BENCH_VARIANT``: ``bare`` (no extension) or ``protected`` (a key, a scope, everything on).
``DATABASE_URL`` and ``REDIS_URL`` choose the backends (SQLite and memory by default).
``BENCH_KEY_FILE``: where ``prepare()`` writes the key the load generator sends.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, require_scopes


def create_app() -> Flask:
    app = Flask("bench")
    variant = os.environ.get("BENCH_VARIANT", "protected")
    if variant == "bare":

        @app.get("/r")
        def bare() -> dict[str, bool]:
            return {"ok": True}

        return app
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["DATABASE_URL"],
        APIKEYS_RATELIMIT_STORAGE_URI=os.environ.get("REDIS_URL", "memory://"),
        APIKEYS_HASH_SECRET="bench-secret-of-sufficient-length",
    )
    db = SQLAlchemy(app)
    APIKeys(app, db=db)

    @app.get("/r")
    @require_scopes("bench:read")
    def protected() -> dict[str, bool]:
        return {"ok": True}

    return app


def prepare() -> str:
    """Create the tables, an organization with room to spare, and a key; return the key."""
    app = create_app()
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        apikeys.drop_all()
        apikeys.create_all()
        organization = apikeys.create_organization(
            name="Bench",
            email="bench@example.com",
            plan="enterprise",
            rate_limit_per_minute=10**9,
            monthly_request_limit=10**9,
        )
        return str(apikeys.create_key(organization, "bench", scopes=["bench:*"]).key)


app = create_app() if os.environ.get("BENCH_SERVE") else None
