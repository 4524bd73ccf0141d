"""Flask-Limiter on top of ours: a key function and a dynamic limit that know the API key.

Flask-Limiter's ``before_request`` may run before our hook, so these authenticate the request
themselves, once per request (:func:`~flask_apikeys.auth.authenticate_request`).
"""

from __future__ import annotations

from flask import current_app, request

from ..auth import authenticate_request
from ..errors import APIKeyError
from ..identity import VerifiedKey
from ..network import client_address
from ..state import EXTENSION_NAME, get_state
from .policies import key_limit


def _current_key() -> VerifiedKey | None:
    try:
        return authenticate_request()
    except APIKeyError:
        return None


def key_func() -> str:
    """A Flask-Limiter key function: ``"apikey:<key id>"``, else the client's address.

    Verifies the key itself (once per request, shared with our hook), because Flask-Limiter's
    ``before_request`` may run before ours. Never returns the key: only its id::

        limiter = Limiter(key_func=apikeys.key_func, app=app)
    """
    if EXTENSION_NAME not in current_app.extensions:
        return request.remote_addr or "127.0.0.1"
    state = get_state()
    key = _current_key() if state.settings.enabled else None
    if key is not None:
        return f"apikey:{key.id}"
    return client_address(request.environ, state.settings.trusted_proxies)


def limit_for_key() -> str:
    """A Flask-Limiter dynamic limit: the current key's effective limit string.

    ``@limiter.limit(apikeys.limit_for_key, key_func=apikeys.key_func)``; requests without a
    key get ``APIKEYS_DEFAULT_RATE_LIMIT``.
    """
    state = get_state()
    default = state.settings.default_rate_limit
    key = _current_key() if state.settings.enabled else None
    return default if key is None else key_limit(key, default)
