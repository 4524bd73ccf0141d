"""What every benchmark builds: a bare route, the same route behind the extension, and keys.

One definition, so that every script measures the same route and the same key check.
"""

from __future__ import annotations

import statistics
import uuid
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, keys, require_scopes
from flask_apikeys.models import APIKey, Organization

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


def bulk_keys(app: Flask, apikeys: APIKeys, count: int, **fields: Any) -> list[str]:
    """``count`` more keys of the bench organization, inserted in one statement.

    ``create_key`` commits (an ``fsync``) per key: ten thousand keys would take minutes. The
    rows are the ones it writes (same hash, prefix and hint), without the audit records.
    """
    state = app.extensions["apikeys"]
    created = [keys.generate_key("pk", "live") for _ in range(count)]
    with app.app_context():
        session = state.service.store.session
        organization_id = session.execute(
            sa.select(Organization.id).where(Organization.name == app.name)
        ).scalar_one()
        session.execute(
            sa.update(Organization)
            .where(Organization.id == organization_id)
            .values(max_api_keys=UNREACHABLE)
        )
        rows = [
            {
                "id": uuid.uuid4(),
                "organization_id": organization_id,
                "key_prefix": keys.parse_key(key).display_prefix,  # type: ignore[union-attr]
                "key_hash": state.hasher.hash(key),
                "key_hint": keys.key_hint(key),
                "name": f"bulk {index}",
                "environment": "live",
                "is_active": True,
                "scopes": ["bench:*"],
                "roles": [],
                "allowed_networks": [],
                "key_metadata": {},
                "total_requests": 0,
                **fields,
            }
            for index, key in enumerate(created)
        ]
        session.execute(sa.insert(APIKey), rows)
        session.commit()
    del apikeys  # the same app's extension; kept for symmetry with bench_keys
    return created


def summary(values: list[float], digits: int = 1) -> str:
    """``median (min-max)``, how every bench prints a set of runs."""
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"
