"""Mask anything shaped like an API key in every log record of the process.

Installed by ``init_app`` as a wrapper around the logging record factory, so it applies to
every logger (the app's, werkzeug's access log, gunicorn's, libraries') and every handler,
including ones configured later. A key that reaches a log message, its arguments or an
exception text is replaced by its visible prefix and ``…[masked]``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .keys import KEY_SEARCH_PATTERN, VISIBLE_SECRET_CHARACTERS

_installed = False


def mask_keys(text: str) -> str:
    """``pk_live_AbCd…`` stays recognisable; the secret does not survive."""

    def replace(match: re.Match[str]) -> str:
        value = match.group(0)
        visible = value.index("_", value.index("_") + 1) + 1 + VISIBLE_SECRET_CHARACTERS
        return value[:visible] + "…[masked]"

    return KEY_SEARCH_PATTERN.sub(replace, text)


def install() -> None:
    """Wrap the record factory once per process (idempotent)."""
    global _installed
    if _installed:
        return
    original = logging.getLogRecordFactory()

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is the caller's to see
            return record
        masked = mask_keys(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            exception_text = str(record.exc_info[1])
            if KEY_SEARCH_PATTERN.search(exception_text):
                record.exc_text = mask_keys(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return record

    logging.setLogRecordFactory(masking_factory)
    _installed = True
