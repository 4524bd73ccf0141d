"""Rate limits, monthly quotas and the failed-attempt block.

:mod:`~.rate_limits` enforces them and writes the headers, from the :mod:`~.policies` of a key
over :mod:`~.counters` (one atomic script on Redis, :mod:`~.redis_script`; optional
:mod:`~.leases`). :mod:`~.flask_limiter` lets Flask-Limiter limit by API key.
"""

from __future__ import annotations

from .rate_limits import RateLimits

__all__ = ["RateLimits"]
