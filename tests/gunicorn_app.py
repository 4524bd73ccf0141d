"""The test app as gunicorn serves it: configured from the environment, as in production.

    TEST_DATABASE_URL=sqlite:///… APIKEYS_RATELIMIT_STORAGE_URI=redis://… \
        gunicorn -w 2 -b 127.0.0.1:PORT tests.gunicorn_app:app

Each worker builds its own app (and its own storage connection); the database and Redis are
all they share. Started by :func:`tests.servers.gunicorn_workers`.
"""

from __future__ import annotations

import os

from flask import Response

from flask_apikeys import current_key
from flask_apikeys.metrics import APIKeysMetrics

from .factory import create_app

app, db, apikeys = create_app(os.environ["TEST_DATABASE_URL"])
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    APIKeysMetrics(app)  # tests/test_metrics_gunicorn.py


@app.after_request
def tell_worker(response: Response) -> Response:
    """Which worker answered, so a test can see that both did."""
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/v1/pid")
def pid() -> dict[str, int]:
    """Which worker answered, in the body, for a key-authenticated request."""
    return {"pid": os.getpid()}


@app.post("/v1/self/revoke")
def revoke_myself() -> dict[str, int]:
    """Revoke the calling key through this worker (the others learn it within the cache TTL)."""
    apikeys.revoke_key(current_key.id, reason="test", revoked_by=f"worker {os.getpid()}")
    return {"revoked_by_worker": os.getpid()}
