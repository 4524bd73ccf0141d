"""A warning when counters kept in a process's memory serve a server of several processes.

With ``memory://`` each worker process counts for itself, so ``N`` workers let ``N`` times a
limit through, silently. The warning names the two fixes. It is given when the counters are
first used under a WSGI server that says it runs the app in several processes
(``wsgi.multiprocess``: gunicorn with more than one worker, uWSGI with several processes), and
in each child process forked after the counters were in use (gunicorn ``--preload``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import has_request_context, request

logger = logging.getLogger("flask_apikeys")

PER_PROCESS_WARNING = (
    "Rate limits are counted in each worker process's memory (APIKEYS_RATELIMIT_STORAGE_URI = "
    '"memory://") and this server runs several processes, so each of them lets the whole '
    "limit through. Count in Redis (APIKEYS_RATELIMIT_STORAGE_URI = "
    '"redis://host:6379/0") or in the app\'s database (APIKEYS_RATELIMIT_STORAGE_URI = '
    '"database") to make limits hold across processes.'
)


def serves_several_processes(environ: dict[str, Any] | None = None) -> bool:
    """Whether the WSGI server of the current request runs the app in several processes."""
    if environ is None:
        if not has_request_context():
            return False
        environ = request.environ
    return bool(environ.get("wsgi.multiprocess"))


def warn_per_process() -> None:
    logger.warning(PER_PROCESS_WARNING)
