"""The app the server benchmarks run under gunicorn, configured by environment variables.

``BENCH_VARIANT``: ``bare`` (no extension) or ``protected`` (a key, a scope, everything on).
``DATABASE_URL`` and ``REDIS_URL`` choose the backends (SQLite and memory by default).
``BENCH_KEYS``: how many keys ``prepare()`` stores (1 by default; the cold-key mix uses 10,000).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from flask import Flask

from bench.common import bare_app, bench_keys, bulk_keys, protected_app


def create_app() -> Flask:
    if os.environ.get("BENCH_VARIANT", "protected") == "bare":
        return bare_app("bench")
    app, _ = protected_app(
        "bench",
        os.environ["DATABASE_URL"],
        APIKEYS_RATELIMIT_STORAGE_URI=os.environ.get("REDIS_URL", "memory://"),
    )
    return app


def prepare() -> list[str]:
    """Create the tables, an organization with room to spare, and its keys; return them.

    A SQLite file is put in WAL mode, as ``docs/deployment.rst`` asks of several workers.
    """
    app = create_app()
    if os.environ["DATABASE_URL"].startswith("sqlite:"):
        database = sqlite3.connect(os.environ["DATABASE_URL"].removeprefix("sqlite:///"))
        with closing(database):
            database.execute("PRAGMA journal_mode=WAL")
    extension = app.extensions["apikeys"].extension
    created = bench_keys(app, extension, fresh=True)
    count = int(os.environ.get("BENCH_KEYS", "1"))
    if count > 1:
        created += bulk_keys(app, extension, count - 1)
    return created


app = create_app() if os.environ.get("BENCH_SERVE") else None
