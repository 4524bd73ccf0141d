"""The rate-limit response headers: ``X-RateLimit-*``, and the IETF draft's ``RateLimit`` and
``RateLimit-Policy`` with ``APIKEYS_RATELIMIT_HEADERS = "all"``, as the request took its
counters (:class:`~flask_apikeys.limiting.RateLimits` left them in the environ).

They are added to the WSGI header list as the response starts (the response step of
:mod:`flask_apikeys.hooks`), after Flask and werkzeug have built it: werkzeug checks every
header of a ``Response`` twice (when it is added and when the list is made), which cost more
than the three headers themselves (``bench/README.md``). Every value here is a number or a
text built from numbers and our policy names, so none can carry a line break.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from math import ceil
from typing import Any

from flask import current_app

from ..environ import RESULT_ENVIRON_KEY
from . import windows
from .counters import Outcome
from .policies import KeyLimits, Month

#: The header list a WSGI app passes to ``start_response``.
WSGIHeaders = list[tuple[str, str]]


def write_headers(
    status: int, wsgi_headers: WSGIHeaders, environ: dict[str, Any], *, ietf: bool
) -> None:
    """X-RateLimit-* (and, with ``ietf``, RateLimit and RateLimit-Policy), as the request took
    its counters, added to the response's ``wsgi_headers``.

    X-RateLimit-* describe the limit that refused the request, else the one with the least
    left; RateLimit lists every policy (draft-ietf-httpapi-ratelimit-headers). The constant
    parts were built once per key configuration
    (:class:`~flask_apikeys.limiting.policies.KeyLimits`).
    """
    result = environ.get(RESULT_ENVIRON_KEY)
    if result is None:
        return
    limits, outcome, month = result
    if outcome.refused is None and status == 429:
        return  # another limiter refused it: see describe_other_refusal
    values = outcome.values
    amounts = limits.amounts
    shown = outcome.refused
    if shown is None:  # the policy with the least left
        shown, least = 0, amounts[0] - values[0]
        for index in range(1, len(values)):
            left = amounts[index] - values[index]
            if left < least:
                shown, least = index, left
    if shown == limits.quota_index:  # the quota renews with the month, not its counter
        reset = month.end
    else:
        reset = outcome.resets[shown]
    remaining = amounts[shown] - values[shown]
    wsgi_headers += (
        ("X-RateLimit-Limit", limits.amount_texts[shown]),
        ("X-RateLimit-Remaining", str(remaining) if remaining > 0 else "0"),
        ("X-RateLimit-Reset", str(int(reset + 1))),
    )
    if ietf:
        wsgi_headers += (
            ("RateLimit-Policy", limits.policy_header),
            ("RateLimit", ratelimit_field(limits, outcome, month)),
        )


def describe_other_refusal(
    wsgi_headers: WSGIHeaders,
    environ: dict[str, Any],
    find_limiter: Callable[[], Any],
    *,
    limit_headers: bool,
) -> None:
    """A 429 that is not ours (Flask-Limiter's): headers for the limit that refused it.

    ``X-RateLimit-*`` for that limit (not ours, which had room) and ``Retry-After``, unless
    Flask-Limiter writes its own headers (``RATELIMIT_HEADERS_ENABLED``); ``limit_headers``
    is off with ``APIKEYS_RATELIMIT_HEADERS = "none"``. ``find_limiter`` returns the
    ``Limiter`` (or ``None``), looked for only when the refusal is not ours.
    """
    result = environ.get(RESULT_ENVIRON_KEY)
    if result is not None and result[1].refused is not None:
        return  # ours: the error carries Retry-After, write_headers the rest
    limiter = find_limiter()
    if limiter is None or flask_limiter_writes_headers(limiter):
        return
    refusing = next((limit for limit in limiter.current_limits if limit.breached), None)
    if refusing is None:
        return
    reset_at = int(refusing.reset_at)
    if limit_headers:
        ours = {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}
        wsgi_headers[:] = [header for header in wsgi_headers if header[0].lower() not in ours]
        wsgi_headers += (
            ("X-RateLimit-Limit", str(int(refusing.limit.amount))),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", str(reset_at)),
        )
    if not any(name.lower() == "retry-after" for name, _ in wsgi_headers):
        wsgi_headers.append(("Retry-After", str(max(1, math.ceil(reset_at - time.time())))))


def registered_limiter() -> Any:
    """The Flask-Limiter ``Limiter`` initialised on the current app, if any."""
    return next(iter(current_app.extensions.get("limiter") or ()), None)


def ratelimit_field(limits: KeyLimits, outcome: Outcome, month: Month) -> str:
    """The IETF draft's ``RateLimit``: what is left of every policy and when it resets."""
    resets = outcome.resets
    if limits.quota_index is not None:
        resets = (month.end, *resets[1:])
    now = windows.now()
    fields = []
    for prefix, amount, value, reset in zip(
        limits.field_prefixes, limits.amounts, outcome.values, resets, strict=True
    ):
        seconds = reset - now
        left = amount - value if value < amount else 0
        fields.append(f"{prefix}{left};t={ceil(seconds) if seconds > 0 else 0}")
    return ", ".join(fields)


def flask_limiter_writes_headers(limiter: Any, app_config: Any = None) -> bool:
    """Whether a Flask-Limiter ``Limiter`` adds its own ``X-RateLimit-*`` headers.

    Its ``headers_enabled`` argument, else ``RATELIMIT_HEADERS_ENABLED`` (read by its
    ``init_app``). Flask-Limiter has no public accessor: the private attribute is pinned by
    ``tests/test_flask_limiter.py`` on the lowest supported release and today's.
    """
    enabled = getattr(limiter, "_headers_enabled", None)
    if enabled is None:
        config = app_config if app_config is not None else current_app.config
        enabled = config.get("RATELIMIT_HEADERS_ENABLED", False)
    return bool(enabled)
