"""Leases: a busy key takes its units from Redis a few at a time instead of one per request.

One Redis round trip per request costs more than the rest of authentication together (see
``bench/README.md``). When a key is busy in this process, :class:`LeasedCounters` takes
several units in one atomic call (all counters or none, as always) and hands them out locally
until they run out, the lease ends (``APIKEYS_RATELIMIT_LEASE_SECONDS``) or a window ends.

What still holds:

- **A limit is never exceeded.** Every request admitted spends a unit that Redis counted in
  the same window; a lease ends before the window it was taken in (its end as Redis reported
  it, less the round trip and a margin).
- **Quiet keys and keys near a limit stay exact.** A lease is sized to what this process used
  of that key during the last lease period, and to at most 1/64 of the smallest remaining
  allowance; below two units every request asks Redis, as without leases.

What changes: units leased but not used before the lease ends are given back only by storages
that can tell the window they were taken in (the database's); elsewhere, near a limit a key may
be refused slightly early (at most 1/64 of the allowance left per worker and lease); and
``X-RateLimit-Remaining`` shows other workers' use as of this worker's last lease (at most a
lease period old).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..forking import after_fork_in_child
from . import windows
from .counters import Counter, Counters, Outcome

#: A lease takes at most this share of the smallest allowance left (1/64).
ALLOWANCE_SHARE = 64
#: And never more units than this.
MAX_LEASE = 1000
#: A lease ends this long (seconds) before the window Redis reported, beyond the round trip.
WINDOW_MARGIN = 0.05
#: How many counter sets keep a lease at most.
MAX_LEASES = 4096


@dataclass(slots=True)
class Lease:
    """Units taken from the storage and not handed out yet, for one set of counters."""

    units: int  # left to hand out
    values: tuple[int, ...]  # the counters right after the lease was taken
    resets: tuple[float, ...]  # when their windows end
    ends_at: float  # windows.now() after which the units are abandoned
    taken_at: float
    used: int = 0  # handed out so far


class LeasedCounters(Counters):
    """Wraps exact counters in a remote storage; see the module docstring."""

    def __init__(self, exact: Counters, lease_seconds: float) -> None:
        self.exact = exact
        self.storage = exact.storage
        self.errors = exact.errors
        self.lease_seconds = lease_seconds
        self._leases: dict[tuple[Counter, ...], Lease] = {}
        self._lock = threading.Lock()
        after_fork_in_child(self, LeasedCounters._forget_leases)

    def _forget_leases(self) -> None:
        """In a forked child: leases are the parent's units; spending them too would count a
        unit twice (and the lock may have been held by a parent thread)."""
        self._leases = {}
        self._lock = threading.Lock()

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        now = windows.now()
        counters = tuple(counters)
        unused = 0
        returned: Lease | None = None
        with self._lock:
            lease = self._leases.get(counters)
            if lease is not None and lease.units >= amount and now < lease.ends_at:
                lease.units -= amount
                lease.used += amount
                # What the counters hold minus what this lease has not handed out yet.
                values = tuple(value - lease.units for value in lease.values)
                return Outcome(None, values, lease.resets)
            if lease is not None and lease.units:  # claimed here, so returned only once
                unused, lease.units, returned = lease.units, 0, lease
        if returned is not None:
            self.exact.give_back(counters, unused, returned.resets, returned.taken_at)
        size = self._lease_size(counters, lease, now) * amount
        started = windows.now()
        outcome = self.exact.take(counters, size)
        if outcome.refused is not None and size > amount:  # too few left for a lease
            outcome = self.exact.take(counters, amount)
            size = amount
        if outcome.refused is not None:
            with self._lock:
                self._leases.pop(counters, None)
            return outcome
        finished = windows.now()
        ends_at = min(
            finished + self.lease_seconds,
            self._windows_end(counters, outcome, finished) - (finished - started) - WINDOW_MARGIN,
        )
        leftover = size - amount  # 0 after an exact call: the record still keeps the pace
        with self._lock:
            if len(self._leases) >= MAX_LEASES:
                self._make_room(finished)
            self._leases[counters] = Lease(
                units=leftover,
                values=outcome.values,
                resets=outcome.resets,
                ends_at=ends_at,
                taken_at=finished,
                used=amount,
            )
        if not leftover:
            return outcome
        return Outcome(None, tuple(value - leftover for value in outcome.values), outcome.resets)

    def _make_room(self, now: float) -> None:
        """Under the lock, with the table full: forget the keys that hold no units (a quiet key
        is remembered only for its pace, and many cold keys pass through), keep the leases
        still running, so a busy key does not lose its units to them; if those alone fill
        half the table, forget everything (their units are abandoned, as a lease that ends)."""
        running = {
            counters: lease
            for counters, lease in self._leases.items()
            if lease.units and now < lease.ends_at
        }
        self._leases = running if len(running) < MAX_LEASES // 2 else {}

    @staticmethod
    def _windows_end(counters: tuple[Counter, ...], outcome: Outcome, now: float) -> float:
        """When the first of the windows the lease's units were counted in ends: a fixed
        window's reset, a sliding window's aligned end (its reset may lie beyond it)."""
        return min(
            windows.window_start(now, counter.window_seconds) + counter.window_seconds
            if counter.sliding
            else reset
            for counter, reset in zip(counters, outcome.resets, strict=True)
        )

    def _lease_size(self, counters: tuple[Counter, ...], lease: Lease | None, now: float) -> int:
        """Units to take: this process's recent pace for one lease period, bounded by what
        is left of every counter. 1 (an exact call) for a key not seen busy yet."""
        if lease is None or self.lease_seconds <= 0:
            return 1
        elapsed = max(now - lease.taken_at, 1e-3)
        pace = lease.used / elapsed  # requests per second through the last lease
        wanted = int(pace * self.lease_seconds)
        left = min(
            counter.limit - value for counter, value in zip(counters, lease.values, strict=True)
        )
        return max(1, min(wanted, MAX_LEASE, left // ALLOWANCE_SHARE))

    def peek(self, counter: Counter) -> tuple[int, float]:
        return self.exact.peek(counter)

    def close(self) -> None:
        self.exact.close()
