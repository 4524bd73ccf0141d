"""Mask API keys and access tokens in every log record of the process.

Installed by ``init_app`` as a wrapper around the logging record factory, so it applies to
every logger (the app's, werkzeug's access log, gunicorn's access and error logs, libraries')
and every handler and formatter, including ones configured later. Masked, wherever a secret
appears in a record:

* the message and its arguments (werkzeug and gunicorn log the request line this way);
* the exception: its whole chain (``__cause__`` and ``__context__``), exception groups and
  notes, as the traceback text (``record.exc_text``) that handlers print;
* ``record.stack_info``.

Masked: key-shaped strings (``pk_live_AbCd…[masked]``), JWT-shaped strings (``eyJ…[masked]``),
and whatever follows ``Bearer``, ``Api-Key``, ``X-API-Key`` or ``access_token`` (the bootstrap
admin key has no shape of its own), also when percent-encoded in a URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

from .keys import KEY_SEARCH_PATTERN, TOKEN_SEARCH_PATTERN, VISIBLE_SECRET_CHARACTERS

MASK = "…[masked]"
#: A credential named by the header or parameter that carries it: ``Bearer x``,
#: ``X-API-Key: x``, ``api_key=x``, ``'access_token': 'x'``. Short values are words, not secrets.
CREDENTIAL_AFTER_NAME = re.compile(
    r"(?i)\b(bearer|api[-_]?key|access[-_]token)"
    r"(\s*[\"']?\s*[:=]\s*[\"']?|\s+)"
    r"([^\s\"',;&]{20,})"
)
_installed = False


def _mask_key(match: re.Match[str]) -> str:
    value = match.group(0)
    visible = value.index("_", value.index("_") + 1) + 1 + VISIBLE_SECRET_CHARACTERS
    return value[:visible] + MASK


def _mask_named(match: re.Match[str]) -> str:
    if MASK in match.group(3):
        return match.group(0)  # a key already masked keeps its recognisable prefix
    return match.group(1) + match.group(2) + MASK


def _mask_plain(text: str) -> str:
    text = KEY_SEARCH_PATTERN.sub(_mask_key, text)
    text = TOKEN_SEARCH_PATTERN.sub("eyJ" + MASK, text)
    return CREDENTIAL_AFTER_NAME.sub(_mask_named, text)


def mask_secrets(text: str) -> str:
    """``pk_live_AbCd…`` stays recognisable; no key, token or named credential survives.

    A URL in a log line is percent-encoded as the client sent it (``pk%5Flive%5F…``): when
    decoding the text reveals a secret, the decoded text is returned, masked.
    """
    masked = _mask_plain(text)
    if "%" in masked:
        decoded = unquote(masked)
        if decoded != masked:
            decoded_masked = _mask_plain(decoded)
            if decoded_masked != decoded:
                return decoded_masked
    return masked


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask the secrets of one record in place (see the module docstring); return it."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string is the caller's to see
        message = None
    if message is not None:
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
    exc_info = record.exc_info
    if exc_info and exc_info[1] is not None:
        # The whole chain and any group, as every handler would print it.
        text = logging.Formatter().formatException(exc_info)
        masked = mask_secrets(text)
        if masked != text:
            # Handlers print exc_text when set; the exception itself, which still holds the
            # secret, is not handed on to them.
            record.exc_text, record.exc_info = masked, None
    if isinstance(record.exc_text, str):
        record.exc_text = mask_secrets(record.exc_text)
    if isinstance(record.stack_info, str):
        record.stack_info = mask_secrets(record.stack_info)
    return record


def install() -> None:
    """Wrap the record factory once per process (idempotent)."""
    global _installed
    if _installed:
        return
    original = logging.getLogRecordFactory()

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return mask_record(original(*args, **kwargs))

    logging.setLogRecordFactory(masking_factory)
    _installed = True
