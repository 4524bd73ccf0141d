"""Cost computed from configuration: ``APIKEYS_COST_TABLE`` prices each request of a key.

::

    APIKEYS_COST_TABLE = {
        "/v1/generate/slides": {"request": 0.002, "per_1k_tokens": 0.01},
        "*": {"request": 0.0001},
    }

An entry is found by the request's URL rule, then its endpoint name, then ``"*"``. Its
``request`` price is charged once, and ``per_1k_tokens`` for the tokens a view recorded with
:func:`~flask_apikeys.record_cost`; a view's own ``cost_usd`` is added on top. Only
responses below 400 are charged. The result is the usage row's cost (so ``usage_stats`` and
the admin API sum it) and the ``apikeys_cost_usd_total`` metric.
"""

from __future__ import annotations

from flask import Flask, Response, request

from .auth import get_current_key
from .environ import COST_ENVIRON_KEY, TOKENS_ENVIRON_KEY

DEFAULT_ENTRY = "*"


def install(app: Flask, prices: dict[str, dict[str, float]]) -> None:
    """Price each authenticated request of ``app`` (nothing when ``prices`` is empty); the
    table was read and checked with the other settings (:func:`~.config_parsers.cost_table`).

    An ``after_request`` hook: it runs before the extension's response step, which writes the
    usage row, so the row carries the cost.
    """
    if not prices:
        return

    def price_request(response: Response) -> Response:
        if response.status_code >= 400 or get_current_key() is None:
            return response
        rule = request.url_rule
        entry = (
            (rule is not None and prices.get(rule.rule))
            or prices.get(request.endpoint or "")
            or prices.get(DEFAULT_ENTRY)
        )
        if entry:
            environ = request.environ
            tokens = environ.get(TOKENS_ENVIRON_KEY) or 0
            cost = entry.get("request", 0.0) + tokens / 1000 * entry.get("per_1k_tokens", 0.0)
            if cost:
                environ[COST_ENVIRON_KEY] = (environ.get(COST_ENVIRON_KEY) or 0.0) + cost
        return response

    app.after_request(price_request)
