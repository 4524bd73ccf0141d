"""The app the server benchmarks run under gunicorn, configured by environment variables.

``BENCH_VARIANT``: ``bare`` (no extension) or ``protected`` (a key, a scope, everything on).
``DATABASE_URL`` and ``REDIS_URL`` choose the backends (SQLite and memory by default).
``BENCH_KEY_FILE``: where ``prepare()`` writes the key the load generator sends.
"""

from __future__ import annotations

import os

from flask import Flask

from bench.common import bare_app, bench_keys, protected_app


def create_app() -> Flask:
    if os.environ.get("BENCH_VARIANT", "protected") == "bare":
        return bare_app("bench")
    app, _ = protected_app(
        "bench",
        os.environ["DATABASE_URL"],
        APIKEYS_RATELIMIT_STORAGE_URI=os.environ.get("REDIS_URL", "memory://"),
    )
    return app


def prepare() -> str:
    """Create the tables, an organization with room to spare, and a key; return the key."""
    app = create_app()
    return bench_keys(app, app.extensions["apikeys"].extension, fresh=True)[0]


app = create_app() if os.environ.get("BENCH_SERVE") else None
