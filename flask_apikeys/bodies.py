"""Reading a request's body where the extension does, within the app's ``MAX_CONTENT_LENGTH``.

Werkzeug refuses a body over the limit with its own ``413`` HTML page as the body is read; the
admin API and the key exchange answer problem documents, so they read through here and refuse
with :class:`~flask_apikeys.errors.RequestTooLarge` instead. (The OAuth endpoints cap their
forms themselves: :func:`flask_apikeys.client_auth.read_form`.)
"""

from __future__ import annotations

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import RequestTooLarge


def read_body(current_request: Request) -> bytes:
    """The request's raw body (kept for later reads), or a 413 problem document."""
    try:
        return current_request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise RequestTooLarge(too_large(current_request.max_content_length)) from None


def too_large(limit: int | None) -> str:
    """What a 413 says: the limit, in bytes."""
    return f"The request body is larger than {limit} bytes."
