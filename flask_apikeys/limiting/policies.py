"""Which limits apply to a key, as counters: parsed once, cached, with the calendar month.

Pure functions and immutable values, no storage and no request: :mod:`flask_apikeys.limiting`
enforces them.
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from limits import parse_many

from .counters import Counter
from .windows import SLIDING_KEY_SUFFIX

if TYPE_CHECKING:
    from ..identity import VerifiedKey

#: A quota counter outlives its month by this much, so a late request never restarts it.
QUOTA_GRACE_SECONDS = 86_400


@lru_cache(maxsize=1024)
def parse_limit(text: str) -> tuple[tuple[int, int], ...]:
    """``"10/second;1000/day"`` as ``((10, 1), (1000, 86400))``: (amount, window seconds).

    Parsed once per distinct string. Two limits on the same window keep the stricter one.
    """
    windows: dict[int, int] = {}
    for item in parse_many(text):
        window = item.get_expiry()
        windows[window] = min(item.amount, windows.get(window, item.amount))
    return tuple((amount, window) for window, amount in sorted(windows.items()))


def per_minute(amount: int | None, default: str) -> str:
    """The limit string for a per-minute count, or ``default`` when there is none."""
    return default if amount is None else f"{amount}/minute"


def key_limit(key: VerifiedKey, default: str) -> str:
    """A key's effective limit: its own, else its organization's (or plan's), else the default."""
    return key.custom_rate_limit or per_minute(key.organization.rate_limit_per_minute, default)


@dataclass(frozen=True, slots=True)
class Month:
    """The current calendar month in UTC."""

    label: str
    start: float
    end: float

    @classmethod
    def containing(cls, now: float) -> Month:
        moment = time.gmtime(now)
        start = calendar.timegm((moment.tm_year, moment.tm_mon, 1, 0, 0, 0))
        year, month = divmod(moment.tm_year * 12 + moment.tm_mon, 12)  # the next month
        end = calendar.timegm((year, month + 1, 1, 0, 0, 0))
        return cls(f"{moment.tm_year:04d}-{moment.tm_mon:02d}", start, end)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Everything a key's requests need, resolved once per key configuration and month."""

    names: tuple[str, ...]
    counters: tuple[Counter, ...]
    #: The ``RateLimit-Policy`` field, the same on every response for this key.
    policy_header: str
    #: Index of the quota counter (always 0) or ``None``.
    quota_index: int | None
    #: ``'"<name>";r='`` of each policy, for the ``RateLimit`` field.
    field_prefixes: tuple[str, ...] = ()
    #: Each counter's limit, and the same as text (``X-RateLimit-Limit``).
    amounts: tuple[int, ...] = ()
    amount_texts: tuple[str, ...] = ()


def build_limits(
    policies: list[tuple[str, str, int, int]],
    quota: tuple[str, int] | None,
    month: Month,
    *,
    sliding: bool = False,
) -> KeyLimits:
    """Counters and the policy header from ``(name, storage key, amount, window)`` entries.

    With ``sliding``, the policies' windows slide (:mod:`~.windows`); the quota's never does.
    """
    counters = tuple(
        Counter(key + SLIDING_KEY_SUFFIX, amount, window, sliding=True)
        if sliding
        else Counter(key, amount, window)
        for _, key, amount, window in policies
    )
    if quota is not None:
        key, amount = quota
        window = int(month.end - month.start)
        policies = [("quota", key, amount, window + QUOTA_GRACE_SECONDS), *policies]
        counters = (Counter(key, amount, window + QUOTA_GRACE_SECONDS), *counters)
    policy_header = ", ".join(
        f'"{name}";q={amount};w={int(month.end - month.start) if name == "quota" else window}'
        for name, _, amount, window in policies
    )
    return KeyLimits(
        names=tuple(policy[0] for policy in policies),
        counters=counters,
        policy_header=policy_header,
        quota_index=0 if quota is not None else None,
        field_prefixes=tuple(f'"{policy[0]}";r=' for policy in policies),
        amounts=tuple(counter.limit for counter in counters),
        amount_texts=tuple(str(counter.limit) for counter in counters),
    )


def requests_per_minute_allowed(text: str | None) -> float:
    """How many requests a limit string lets through in one minute at most (``None``: any).

    ``"10/second"`` allows 600, ``"1000/hour"`` 1000 (all of them may come in one minute),
    ``"5/minute;100/hour"`` 5.
    """
    return requests_allowed_within(text, 60)


def requests_allowed_within(text: str | None, seconds: int) -> float:
    """How many requests a limit string lets through in ``seconds`` at most (``None``: any):
    each of its windows allows its amount once per window started in that time."""
    if text is None:
        return math.inf
    allowed = math.inf
    for amount, window in parse_limit(text):
        windows_started = max(1, math.ceil(seconds / window)) if window > 0 else 1
        allowed = min(allowed, amount * windows_started)
    return allowed


def allows_more(granted: str | None, held: str | None) -> bool:
    """Whether ``granted`` lets through more than ``held`` in a minute or in any window of
    ``held`` (``60/minute`` allows more a day than ``60/minute;1000/day``)."""
    spans = {60} | ({window for _, window in parse_limit(held)} if held is not None else set())
    return any(
        requests_allowed_within(granted, span) > requests_allowed_within(held, span)
        for span in sorted(spans)
    )
