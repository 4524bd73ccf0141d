"""A logging filter that tells the host app's log records who made the request.

Attach it to a handler (``handler.addFilter(APIKeyLogContext())``) and every record made
during a request carries ``organization_id``, ``api_key_id``, ``key_hint`` (the key's last
characters, never the key) and ``request_id``; outside a request, or before the key is
verified, they are ``"-"``. Formatters use them as ``%(organization_id)s``; JSON formatters
that copy a record's attributes get them as fields.
"""

from __future__ import annotations

import logging
import uuid

from flask import has_request_context, request

from .auth import get_current_key

#: The request-id header a proxy may set; otherwise one is made for the request.
REQUEST_ID_HEADER = "HTTP_X_REQUEST_ID"
REQUEST_ID_ENVIRON_KEY = "flask_apikeys.request_id"
FIELDS = ("organization_id", "api_key_id", "key_hint", "request_id")
#: A request id taken from a header is cut to this length and to printable ASCII.
MAX_REQUEST_ID = 64


class APIKeyLogContext(logging.Filter):
    """Adds the organization, key id, key hint and request id to each record; keeps them all."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = dict.fromkeys(FIELDS, "-")
        if has_request_context():
            values["request_id"] = request_id()
            key = get_current_key()
            if key is not None:
                values["organization_id"] = str(key.organization.id)
                values["api_key_id"] = str(key.id)
                values["key_hint"] = key.hint
        for field, value in values.items():
            if not hasattr(record, field):
                setattr(record, field, value)
        return True


def request_id() -> str:
    """The current request's id: its ``X-Request-ID`` (printable, at most 64 characters), or a
    new UUID kept for the rest of the request."""
    environ = request.environ
    known = environ.get(REQUEST_ID_ENVIRON_KEY)
    if known is None:
        given = environ.get(REQUEST_ID_HEADER, "")
        cleaned = "".join(char for char in given[:MAX_REQUEST_ID] if char.isprintable())
        known = environ[REQUEST_ID_ENVIRON_KEY] = cleaned.isascii() and cleaned or uuid.uuid4().hex
    return str(known)
