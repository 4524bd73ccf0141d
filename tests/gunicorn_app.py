"""The test app as gunicorn serves it: configured from the environment, as in production.

    TEST_DATABASE_URL=sqlite:///… APIKEYS_RATELIMIT_STORAGE_URI=redis://… \
        gunicorn -w 2 -b 127.0.0.1:PORT tests.gunicorn_app:app

Each worker builds its own app (and its own storage connection); Redis is all they share.
"""

from __future__ import annotations

import os

from flask import Response

from .factory import create_app

app, db, apikeys = create_app(os.environ["TEST_DATABASE_URL"])


@app.after_request
def tell_worker(response: Response) -> Response:
    """Which worker answered, so a test can see that both did."""
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response
