"""Rate limits, monthly quotas and the failed-attempt block: policies, counters, storage."""

from __future__ import annotations

from .rate_limits import RateLimits, key_func, limit_for_key

__all__ = ["RateLimits", "key_func", "limit_for_key"]
