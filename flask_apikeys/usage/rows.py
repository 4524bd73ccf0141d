"""The usage row: what the response step (:mod:`flask_apikeys.hooks`) captures of each
authenticated request as its response starts, and :func:`record_cost`, which a view calls to
add its tokens and cost to it.

Every value taken from the request is made storable here, when it is captured, so that the
writer (:mod:`flask_apikeys.usage.writer`) rarely meets a row the database refuses. A queued
row also carries, after its stored columns, what the receivers of
:data:`~flask_apikeys.signals.usage_rows_taken` (the Prometheus metrics) count besides
(:data:`TAKEN_FIELDS`): the writer stores only the columns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import request

from .. import signals
from ..boundedcache import BoundedCache
from ..environ import (
    COST_ENVIRON_KEY,
    ERROR_ENVIRON_KEY,
    OUTCOME_ENVIRON_KEY,
    RESULT_ENVIRON_KEY,
    START_ENVIRON_KEY,
    TOKENS_ENVIRON_KEY,
    VERIFICATION_SECONDS_ENVIRON_KEY,
)
from ..identity import VerifiedKey
from ..network import client_address
from ..storable import MAX_INTEGER, storable_text
from .insert import USAGE_FIELDS
from .writer import UsageWriter

logger = logging.getLogger("flask_apikeys.usage")
#: What a usage row names as its endpoint when no URL rule matched (a 404, a 405).
UNMATCHED_ENDPOINT = "[unmatched]"
#: The largest status code the ``SMALLINT`` column takes.
MAX_STATUS = 32767
#: The largest cost ``NUMERIC(12, 6)`` takes.
MAX_COST = 999_999.999999
#: A queued row: the stored columns, then, while :data:`~flask_apikeys.signals.usage_rows_taken`
#: has a receiver (only then: ~3.7k instructions per request otherwise, ``bench/README.md``),
#: the seconds the key's verification took (``None`` when a key function verified it outside
#: the hook) and the organization's monthly quota as the request left it, ``(used, limit,
#: month)`` (``None`` when no quota applied; :func:`quota_figure`).
TAKEN_FIELDS = (*USAGE_FIELDS, "verification_seconds", "quota")
#: Where a queued row keeps what only the signal's receivers read.
VERIFICATION_SECONDS_FIELD = TAKEN_FIELDS.index("verification_seconds")
QUOTA_FIELD = TAKEN_FIELDS.index("quota")
#: How many (rule, method) pairs a recorder remembers as storable text: an app's routes and
#: their methods (a request that matched no rule is not remembered: its method is any text).
MAX_REMEMBERED_ROUTES = 1024


def record_cost(*, tokens: int | None = None, cost_usd: float | None = None) -> None:
    """Attach tokens and cost to the current request's usage row (call it from a view)."""
    environ = request.environ
    if tokens is not None:
        environ[TOKENS_ENVIRON_KEY] = (environ.get(TOKENS_ENVIRON_KEY) or 0) + int(tokens)
    if cost_usd is not None:
        environ[COST_ENVIRON_KEY] = (environ.get(COST_ENVIRON_KEY) or 0.0) + float(cost_usd)


def quota_figure(result: Any) -> tuple[int, int, str] | None:
    """The organization's monthly quota as a request left it, ``(used, limit, month)``, from
    what the rate limits took (``(KeyLimits, Outcome, Month)``); ``None`` without a quota.

    Plain numbers and the month's label, not the limits' objects: a row keeps them until the
    writer takes it, and a queue of objects the garbage collector must visit costs every
    request (~2.7k instructions each with the metrics on).
    """
    if result is None:
        return None
    limits, outcome, month = result
    index = limits.quota_index
    if index is None:
        return None
    return (outcome.values[index], limits.counters[index].limit, month.label)


def _storable_tokens(tokens: Any) -> int | None:
    """The tokens of :func:`record_cost`, or ``None`` when ``INTEGER`` cannot hold them."""
    if tokens is None:
        return None
    if isinstance(tokens, int) and -MAX_INTEGER <= tokens <= MAX_INTEGER:
        return tokens
    logger.warning("flask-apikeys recorded no tokens for a request: %r is out of range", tokens)
    return None


def _storable_cost(cost: Any) -> float | None:
    """The cost of :func:`record_cost`, or ``None`` when it is not a number the column holds."""
    if cost is None:
        return None
    if isinstance(cost, float) and -MAX_COST <= cost <= MAX_COST:  # False for NaN
        return cost
    logger.warning("flask-apikeys recorded no cost for a request: %r is out of range", cost)
    return None


def make_usage_recorder(
    writer: UsageWriter, trusted_proxies: Any
) -> Callable[[int, dict[str, Any]], None]:
    """What the extension's response step calls with the response's status and the request's
    environ: queue a row for every request that a key authenticated."""
    add_usage = writer.add_usage
    taken = signals.usage_rows_taken
    #: (rule, method) → both as storable text: the same few pairs on every request.
    route_texts: BoundedCache[tuple[str, str], tuple[str, str]] = BoundedCache(
        MAX_REMEMBERED_ROUTES
    )

    def record_usage(status: int, environ: dict[str, Any]) -> None:
        """Queue the finished request's row (its timestamp stays a float until written).

        One function, not a chain of helpers: it runs on every authenticated request.
        """
        key = environ.get(OUTCOME_ENVIRON_KEY)
        if not isinstance(key, VerifiedKey):
            return
        started = environ.get(START_ENVIRON_KEY)
        elapsed_ms = 0.0 if started is None else (time.perf_counter() - started) * 1000
        # A key was verified, so the request's context is still there (see hooks.py).
        current_request = request._get_current_object()  # type: ignore[attr-defined]
        rule = current_request.url_rule
        # The rule, never the raw path: a path is the client's text (of any length, with
        # %00 in it), and a 404 path is not an endpoint of the app.
        if rule is None:
            endpoint, method = UNMATCHED_ENDPOINT, storable_text(current_request.method, 10)
        else:
            route = (rule.rule, current_request.method)
            endpoint, method = route_texts.get(route) or route_texts.put(
                route, (storable_text(route[0], 300), storable_text(route[1], 10))
            )
        error = environ.get(ERROR_ENVIRON_KEY)
        user_agent = environ.get("HTTP_USER_AGENT")
        tokens = environ.get(TOKENS_ENVIRON_KEY)
        cost = environ.get(COST_ENVIRON_KEY)
        if trusted_proxies:
            address = client_address(environ, trusted_proxies)
        else:
            address = environ.get("REMOTE_ADDR") or ""
        row: tuple[Any, ...] = (
            key.id,
            key.organization.id,
            time.time(),
            endpoint,
            method,
            status if 0 <= status <= MAX_STATUS else 0,
            round(elapsed_ms, 3),
            None if tokens is None else _storable_tokens(tokens),
            None if cost is None else _storable_cost(cost),
            storable_text(address, 45) or None,
            None if user_agent is None else storable_text(user_agent, 300),
            None if error is None else storable_text(str(error.detail), 500),
            None if error is None else storable_text(error.error_code, 50),
        )
        if taken.receivers:  # what only the signal's receivers (the metrics) read
            # quota_figure(), inline: a call per request is a tenth of what the metrics cost.
            quota = None
            result = environ.get(RESULT_ENVIRON_KEY)
            if result is not None:
                limits, outcome, month = result
                index = limits.quota_index
                if index is not None:
                    quota = (outcome.values[index], limits.counters[index].limit, month.label)
            row += (environ.get(VERIFICATION_SECONDS_ENVIRON_KEY), quota)
        add_usage(row)

    return record_usage
