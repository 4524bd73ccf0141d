"""The two window strategies, as pure arithmetic: which window a moment falls in, the sliding
estimate, and when a refused request may retry.

``fixed-window``
    A counter per window; the window starts at the counter's first request (as the ``limits``
    library's fixed-window strategy does) and the count starts again from zero when it ends.
    A burst at the end of one window and the start of the next gets up to twice the limit
    through within a few seconds.
``sliding-window`` (the default)
    Windows are aligned on multiples of their length (a minute window starts at second 0 of
    each minute). A request is admitted while ``previous × (1 − elapsed / window) + current``
    plus the request is at most the limit: the previous window's count, weighted by how much of
    it still lies within one window of now, plus the current window's. Two numbers per
    counter, and exact all-or-none checks as for the fixed window; it assumes the previous
    window's requests were spread evenly over it. In the interval of one window length ending
    ``x`` seconds into a window it lets through at most ``limit × (1 + x / window)``, so a burst
    around a boundary that ends ``x`` seconds after it gets at most ``limit + limit × x /
    window`` (the limit itself when ``x`` is small), instead of ``2 × limit``.

The monthly quota is neither: it counts calendar months in UTC
(:class:`~flask_apikeys.limiting.policies.Month`).
"""

from __future__ import annotations

import math
import time

#: The clock of every limit (tests replace it to cross a window boundary without waiting).
now = time.time

FIXED_WINDOW = "fixed-window"
SLIDING_WINDOW = "sliding-window"
STRATEGIES = (SLIDING_WINDOW, FIXED_WINDOW)
#: Appended to a sliding counter's storage key: its stored shape differs from a fixed one's,
#: so a change of strategy starts new counters instead of misreading the old ones.
SLIDING_KEY_SUFFIX = ":sw"


def window_start(now: float, window_seconds: int) -> float:
    """Start of the aligned window that contains ``now``."""
    return (now // window_seconds) * window_seconds


def estimate(previous: float, current: float, now: float, start: float, window: int) -> float:
    """The sliding estimate of what the last ``window`` seconds used."""
    return previous * (1 - (now - start) / window) + current


def remaining_after(limit: int, used: float) -> int:
    """Whole units still admitted now (``X-RateLimit-Remaining``)."""
    left = math.floor(limit - used)
    return left if left > 0 else 0


def next_unit_at(
    limit: int, previous: float, current: float, start: float, window: int, amount: int = 1
) -> float:
    """When the estimate will have room for ``amount`` more units (``Retry-After``).

    Within the current window the estimate falls as the previous window's weight does; past
    its end the current count becomes the previous one and falls in turn.
    """
    target = limit - amount
    if current <= target:
        if previous <= 0:
            return start
        return start + window * (1 - (target - current) / previous)
    if target < 0:  # never, with the same amount: at least the next window
        return start + 2 * window
    return start + window + window * (1 - target / current)


def sliding_view(
    limit: int,
    window: int,
    start: float,
    previous: float,
    current: float,
    now: float,
    refused_amount: int = 0,
) -> tuple[int, float]:
    """A sliding counter as the headers show it: its value (the limit less the whole units
    left) and its reset: when the next unit frees if none is left (or ``refused_amount``
    was refused), else the end of the current window."""
    left = remaining_after(limit, estimate(previous, current, now, start, window))
    if refused_amount:
        reset = next_unit_at(limit, previous, current, start, window, refused_amount)
    elif left == 0:
        reset = next_unit_at(limit, previous, current, start, window)
    else:
        reset = start + window
    return limit - left, reset
