"""What every benchmark builds: a bare route, the same route behind the extension, and keys.

One definition, so that every script measures the same route and the same key check.
"""

from __future__ import annotations

import statistics
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, require_scopes

#: Limits no benchmark reaches: the counters are taken, never refused.
UNREACHABLE = 10**9
HASH_SECRET = "bench-secret-of-sufficient-length"


def bare_app(name: str) -> Flask:
    """``GET /r`` with nothing in front of it: the limit every ratio is measured against."""
    app = Flask(name)

    @app.get("/r")
    def bare() -> dict[str, bool]:
        return {"ok": True}

    return app


def protected_app(name: str, database_url: str, **config: Any) -> tuple[Flask, APIKeys]:
    """``GET /r`` behind the extension and ``@require_scopes("bench:read")``."""
    app = Flask(name)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, APIKEYS_HASH_SECRET=HASH_SECRET)
    app.config.update(config)
    apikeys = APIKeys(app, db=SQLAlchemy(app))

    @app.get("/r")
    @require_scopes("bench:read")
    def protected() -> dict[str, bool]:
        return {"ok": True}

    return app, apikeys


def bench_keys(app: Flask, apikeys: APIKeys, count: int = 1, *, fresh: bool = False) -> list[str]:
    """Create the tables (dropped first when ``fresh``), a roomy organization and its keys."""
    with app.app_context():
        if fresh:
            apikeys.drop_all()
        apikeys.create_all()
        organization = apikeys.create_organization(
            name=app.name,
            email="bench@example.com",
            plan="enterprise",
            rate_limit_per_minute=UNREACHABLE,
            monthly_request_limit=UNREACHABLE,
            max_api_keys=count + 1,
        )
        return [
            apikeys.create_key(organization, f"bench {index}", scopes=["bench:*"]).key
            for index in range(count)
        ]


def summary(values: list[float], digits: int = 1) -> str:
    """``median (min-max)``, how every bench prints a set of runs."""
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"
