"""Where one request's progress is kept: keys of its WSGI environ, all in one place.

The environ rather than ``g``: ``g`` belongs to the app context, which several requests share
when one is already pushed (as in tests), while the environ is the request's own. Each key is
written by one step of the pipeline (:mod:`flask_apikeys.hooks`) and read by later ones.
"""

from __future__ import annotations

#: The outcome of authentication: a :class:`~flask_apikeys.identity.VerifiedKey`, ``None``
#: (no credential), or the :class:`~flask_apikeys.errors.APIKeyError` that refused it.
OUTCOME_ENVIRON_KEY = "flask_apikeys.outcome"
#: A digest (:func:`~flask_apikeys.hashing.cache_digest`) of the credential the outcome is
#: about when a caller gave it (an OAuth client secret, the dashboard's sign-in form) rather
#: than the headers: a later call that asks about another credential must not be given this
#: one's outcome. Never the credential itself; compared in constant time.
CREDENTIAL_ENVIRON_KEY = "flask_apikeys.credential"
#: Set once a request went through rate limits, quota and the failed-attempt count, so that
#: whoever authenticates it next (a scope decorator, the admin API) does not count it twice.
LIMITED_ENVIRON_KEY = "flask_apikeys.limited"
#: What the limits took, ``(KeyLimits, Outcome, Month)``, for the rate-limit headers.
RESULT_ENVIRON_KEY = "flask_apikeys.ratelimit"
#: The verified claims of the request's access token (absent for keys).
CLAIMS_ENVIRON_KEY = "flask_apikeys.token_claims"
#: The last error made during the request, so that its required headers (``Retry-After``,
#: ``WWW-Authenticate``) survive an app's own ``@app.errorhandler(429)`` or ``(401)``.
RAISED_ENVIRON_KEY = "flask_apikeys.raised"
#: The error our handler rendered, for the usage row.
ERROR_ENVIRON_KEY = "flask_apikeys.error"
#: ``time.perf_counter()`` when the request reached the hook, for the usage row's latency.
START_ENVIRON_KEY = "flask_apikeys.started"
#: Seconds the verification of a presented credential took, accepted or refused (absent when
#: none was presented), for the latency histogram of :mod:`flask_apikeys.metrics`.
VERIFICATION_SECONDS_ENVIRON_KEY = "flask_apikeys.verification_seconds"
#: Tokens and cost a view attached with :func:`~flask_apikeys.record_cost`.
TOKENS_ENVIRON_KEY = "flask_apikeys.tokens"
COST_ENVIRON_KEY = "flask_apikeys.cost"
