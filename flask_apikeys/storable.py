"""Values every database takes: what request data is made into before it is queued or written.

PostgreSQL refuses a NUL character in text and in JSON, any driver refuses a lone UTF-16
surrogate (it has no UTF-8 encoding), and PostgreSQL refuses a string longer than its column.
A request can carry all three (``%00`` in a path, a header, ``X-Forwarded-For``), so whatever a
request contributes to a usage row or an audit record goes through these functions when it is
captured, and one bad request can never make a batch that the database refuses.

Input that a caller *asks* to store (names, scopes, metadata) is refused instead, with a 422:
see :func:`unstorable_reason` and :mod:`flask_apikeys.service.validation`. That includes a key
or access token pasted into such a field: no key is ever stored in clear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError

from .keys import looks_like_access_token, looks_like_key

#: What a flush that fails on its *rows* raises (a value the database or the driver refuses, a
#: key deleted since the request), as opposed to a database that cannot be reached: the rows at
#: fault are dropped, the others written. ``OverflowError`` and ``ValueError`` are what the
#: sqlite3 module raises for a value it cannot bind.
ROW_ERRORS: tuple[type[Exception], ...] = (DataError, IntegrityError, OverflowError, ValueError)
#: What stands in for a character that cannot be stored (NUL, a lone surrogate).
REPLACEMENT = "\ufffd"
#: The deepest JSON a caller may store (metadata): far beyond any real use, far below the
#: nesting at which parsers and databases give up.
MAX_JSON_DEPTH = 32
#: The range of a PostgreSQL ``INTEGER`` and ``BIGINT`` column.
MAX_INTEGER = 2**31 - 1
MAX_BIG_INTEGER = 2**63 - 1


def storable_text(value: str, width: int | None = None) -> str:
    """``value`` without NUL or lone surrogates (each becomes U+FFFD), cut to ``width``."""
    if not value.isascii():
        # "surrogatepass" then "replace": a lone surrogate becomes "?"-like bytes, not an error.
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    return value if width is None else value[:width]


def optional_storable_text(value: Any, width: int) -> str | None:
    """:func:`storable_text` of ``value`` as a string, or ``None`` for ``None``."""
    return None if value is None else storable_text(str(value), width)


def storable_json(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON-like value that PostgreSQL's ``jsonb`` and SQLite both take: text made
    storable, NaN and infinities as ``None``, integers beyond 64 bits and anything else as
    text, nesting cut off at :data:`MAX_JSON_DEPTH`."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, int):
        if -MAX_BIG_INTEGER - 1 <= value <= MAX_BIG_INTEGER:
            return value
        return None if value.bit_length() > 10_000 else str(value)  # str() refuses huge ones
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= MAX_JSON_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {
            storable_text(str(key)): storable_json(item, depth + 1) for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [storable_json(item, depth + 1) for item in value]
    return storable_text(str(value))


#: Why a caller's text holding a credential is refused (the credential itself never repeated).
CREDENTIAL_REASON = (
    "must not contain an API key or access token (keys are never stored in clear; "
    "revoke it if it is real)"
)


def unstorable_reason(value: str) -> str | None:
    """Why ``value`` cannot be stored as it is (a NUL, a lone surrogate, a key or access token
    pasted into it), or ``None``."""
    if "\x00" in value:
        return "must not contain a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode (no lone UTF-16 surrogates)"
    if looks_like_key(value) or looks_like_access_token(value):
        return CREDENTIAL_REASON
    return None


def json_problem(value: Any, depth: int = 0) -> str | None:
    """Why a JSON-like value cannot be stored as it is, or ``None``: a bad string (or key), a
    NaN or infinity, an integer beyond 64 bits, nesting deeper than :data:`MAX_JSON_DEPTH`."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return unstorable_reason(value)
    if isinstance(value, int):
        return None if -MAX_BIG_INTEGER - 1 <= value <= MAX_BIG_INTEGER else "an integer too large"
    if isinstance(value, float):
        return None if math.isfinite(value) else "NaN and infinities are not JSON"
    if depth >= MAX_JSON_DEPTH:
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return "object keys must be text"
            problem = unstorable_reason(key) or json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for item in value:
            problem = json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    return f"a {type(value).__name__} is not JSON"
