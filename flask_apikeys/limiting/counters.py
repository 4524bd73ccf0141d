"""Several fixed-window counters taken together: all of them, or none.

A request is under a key's limit, its organization's limit and a monthly quota at once. If one
of them refuses, the others must not be consumed by the refused request, and each limit must
stay exact when many workers race for its last unit. So the counters of one request are
checked and incremented as one operation:

- Redis (and Sentinel or Cluster, which use the same client): one Lua script that reads every
  counter, and increments them all only if none would pass its limit. It is atomic on the server
  and costs one round trip. The keys of one request share a ``{hash tag}`` so that a cluster
  keeps them in one slot.
- In-process memory: the same check-then-increment under one lock, on plain dicts
  (:class:`LocalCounters`) unless a Flask-Limiter's ``MemoryStorage`` is shared.
- Any other ``limits`` storage: increment in order and give back what was taken as soon as one
  refuses. Each limit stays exact (a unit counts only once its increment stayed within the
  limit); a concurrent request may see a unit that is about to be given back.

A counter is a fixed window, which starts at its first hit as in ``limits``' fixed-window
strategy, or a sliding one (:mod:`~.windows`): the previous aligned window's count, weighted,
plus the current one's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage

from . import windows
from .redis_script import TAKE_ALL_SCRIPT, ScriptCaller, caller_for, parse_take_reply

try:  # the redis extra; without it there is no Redis storage to count in
    from redis.exceptions import RedisClusterException
except ImportError:  # pragma: no cover - exercised only without the extra
    RedisClusterException = None  # type: ignore[assignment,misc]


@dataclass(frozen=True, slots=True)
class Counter:
    """One limited counter: where it is stored, how many units a window allows, how long."""

    key: str
    limit: int
    window_seconds: int
    #: A sliding window (:mod:`~.windows`), else a fixed one.
    sliding: bool = False


class Outcome(NamedTuple):
    """What :meth:`Counters.take` found: which counter refused (if any), values and resets.

    ``values[i]`` is counter ``i`` after the request (unchanged if it was refused);
    ``resets[i]`` is when its window ends, as a POSIX timestamp.
    """

    refused: int | None
    values: tuple[int, ...]
    resets: tuple[float, ...]


class Counters:
    """Where counters live; :meth:`take` consumes from all of them or from none."""

    #: The ``limits`` storage behind the counters (``None`` for :class:`LocalCounters`).
    storage: Any = None
    #: What the storage raises when its server cannot be reached.
    errors: tuple[type[BaseException], ...] = ()

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        """Consume ``amount`` from every counter, or from none if one would pass its limit."""
        raise NotImplementedError

    def peek(self, counter: Counter) -> tuple[int, float]:
        """The counter's value and window end, without consuming."""
        raise NotImplementedError

    def give_back(
        self, counters: Sequence[Counter], units: int, resets: Sequence[float], taken_at: float
    ) -> None:
        """Return ``units`` a lease took at ``taken_at`` and did not use, to the windows they
        were counted in (``resets`` as the take reported them). By default they are abandoned:
        a storage that cannot tell a window from the next must not give them to the next."""

    def close(self) -> None:
        """Close connections of our own (the storage's client is closed by its owner)."""


class GiveBackCounters(Counters):
    """Increment-and-give-back over any ``limits`` storage (the fallback).

    A sliding counter is two of the storage's counters, one per aligned window
    (``<key>/<window start>``), each kept for two windows.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.errors = _base_exceptions(storage)

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        storage = self.storage
        now = windows.now()
        taken: list[Counter] = []
        refused = None
        for index, counter in enumerate(counters):
            key, expiry = _storage_key(counter, now)
            value: float = storage.incr(key, expiry, amount=amount)
            taken.append(counter)
            if counter.sliding:
                value += self._weighted_previous(counter, now)
            if value > counter.limit:
                refused = index
                self._give_back(taken, amount, now)
                break
        values, resets = zip(
            *(
                self._view(counter, now, amount if index == refused else 0)
                for index, counter in enumerate(counters)
            ),
            strict=True,
        )
        return Outcome(refused, tuple(values), tuple(resets))

    def peek(self, counter: Counter) -> tuple[int, float]:
        value, reset = self._view(counter, windows.now())
        return value, reset

    def _weighted_previous(self, counter: Counter, now: float) -> float:
        start = windows.window_start(now, counter.window_seconds)
        previous = self.storage.get(f"{counter.key}/{int(start - counter.window_seconds)}")
        return float(previous) * (1 - (now - start) / counter.window_seconds)

    def _view(self, counter: Counter, now: float, refused_amount: int = 0) -> tuple[int, float]:
        """The counter's value and reset, read back from the storage."""
        storage = self.storage
        if not counter.sliding:
            return storage.get(counter.key), storage.get_expiry(counter.key)
        window = counter.window_seconds
        start = windows.window_start(now, window)
        current = storage.get(f"{counter.key}/{int(start)}")
        previous = storage.get(f"{counter.key}/{int(start - window)}")
        return windows.sliding_view(
            counter.limit, window, start, previous, current, now, refused_amount
        )

    def _give_back(self, taken: Sequence[Counter], amount: int, now: float) -> None:
        decrement = getattr(self.storage, "decr", None)
        for counter in taken:
            key, expiry = _storage_key(counter, now)
            if decrement is not None:
                decrement(key, amount)
            else:
                self.storage.incr(key, expiry, amount=-amount)


class MemoryCounters(GiveBackCounters):
    """Check-then-increment under one lock: exact and never a transient over-count."""

    storage: MemoryStorage

    def __init__(self, storage: MemoryStorage) -> None:
        super().__init__(storage)
        self._lock = threading.Lock()

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        storage = self.storage
        now = windows.now()
        with self._lock:
            refused = None
            for index, counter in enumerate(counters):
                used: float = storage.get(_storage_key(counter, now)[0])
                if counter.sliding:
                    used += self._weighted_previous(counter, now)
                if used + amount > counter.limit:
                    refused = index
                    break
            if refused is None:
                for counter in counters:
                    key, expiry = _storage_key(counter, now)
                    storage.incr(key, expiry, amount=amount)
            values, resets = zip(
                *(
                    self._view(counter, now, amount if index == refused else 0)
                    for index, counter in enumerate(counters)
                ),
                strict=True,
            )
        return Outcome(refused, tuple(values), tuple(resets))


def _rolled(entry: list[Any] | None, window: int, now: float) -> list[Any]:
    """A sliding entry moved to the window of ``now``: the current count becomes the previous
    one if the windows are adjacent, else both start from zero."""
    start = (now // window) * window
    if entry is None:
        return [start, 0, 0, start + window]
    entry[2] = entry[1] if entry[0] == start - window else 0
    entry[0], entry[1], entry[3] = start, 0, start + window
    return entry


def _storage_key(counter: Counter, now: float) -> tuple[str, int]:
    """Where a ``limits`` storage keeps the counter's current window, and for how long."""
    if not counter.sliding:
        return counter.key, counter.window_seconds
    start = windows.window_start(now, counter.window_seconds)
    return f"{counter.key}/{int(start)}", 2 * counter.window_seconds


class LocalCounters(Counters):
    """The ``memory://`` storage we own: plain dicts under one lock, a tenth of the cost of
    going through ``limits``' ``MemoryStorage`` (which also serves other strategies).

    A fixed counter's entry is ``[value, window end]``; a sliding one's ``[window start,
    current count, previous count, window end]``.
    """

    def __init__(self) -> None:
        self._entries: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._sweep_at = 4096

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        now = windows.now()
        entries = self._entries
        refused = None
        with self._lock:
            found: list[Any] = []
            useds: list[float] = []
            for index, counter in enumerate(counters):
                entry = entries.get(counter.key)
                if counter.sliding:
                    if entry is None:
                        entry = entries[counter.key] = _rolled(None, counter.window_seconds, now)
                    elif now >= entry[3]:  # (a clock that steps back stays in the window)
                        _rolled(entry, counter.window_seconds, now)
                    # The previous count weighs (window end − now) / window.
                    used = entry[2] * (entry[3] - now) / counter.window_seconds + entry[1]
                else:
                    if entry is not None and entry[1] <= now:
                        entry = None
                    used = entry[0] if entry else 0
                found.append(entry)
                useds.append(used)
                if refused is None and used + amount > counter.limit:
                    refused = index
            values: list[int] = []
            resets: list[float] = []
            if refused is None:  # take from every counter, reading each back as it goes
                for index, counter in enumerate(counters):
                    entry = found[index]
                    if counter.sliding:
                        entry[1] += amount
                        left = counter.limit - useds[index] - amount
                        if left >= 1:  # the common case, inline
                            values.append(counter.limit - int(left))
                            resets.append(entry[3])
                            continue
                        value, reset = windows.sliding_view(
                            counter.limit,
                            counter.window_seconds,
                            entry[0],
                            entry[2],
                            entry[1],
                            now,
                        )
                    elif entry is None:
                        reset = now + counter.window_seconds
                        entries[counter.key] = [amount, reset]
                        value = amount
                    else:
                        entry[0] += amount
                        value, reset = entry[0], entry[1]
                    values.append(value)
                    resets.append(reset)
                if len(entries) >= self._sweep_at:
                    self._sweep(now)
            else:  # take from none, and show each counter as it is
                for index, counter in enumerate(counters):
                    entry = found[index]
                    if counter.sliding:
                        left = counter.limit - useds[index]
                        if left >= 1 and index != refused:
                            values.append(counter.limit - int(left))
                            resets.append(entry[3])
                            continue
                        value, reset = windows.sliding_view(
                            counter.limit,
                            counter.window_seconds,
                            entry[0],
                            entry[2],
                            entry[1],
                            now,
                            amount if index == refused else 0,
                        )
                    elif entry is None:
                        value, reset = 0, now + counter.window_seconds
                    else:
                        value, reset = entry[0], entry[1]
                    values.append(value)
                    resets.append(reset)
        # tuple.__new__ rather than Outcome(...): the named tuple's own __new__ is a Python
        # function, and calling it cost more than the rest of this method's bookkeeping.
        return tuple.__new__(Outcome, (refused, tuple(values), tuple(resets)))

    def peek(self, counter: Counter) -> tuple[int, float]:
        now = windows.now()
        with self._lock:
            entry = self._entries.get(counter.key)
            if counter.sliding:
                window = counter.window_seconds
                start = (now // window) * window
                current = previous = 0
                if entry is not None and entry[0] == start:
                    current, previous = entry[1], entry[2]
                elif entry is not None and entry[0] == start - window:
                    previous = entry[1]
                return windows.sliding_view(counter.limit, window, start, previous, current, now)
            if entry is None or entry[1] <= now:
                return 0, now
            return int(entry[0]), entry[1]

    def _sweep(self, now: float) -> None:
        """Drop ended windows; called under the lock when the table has doubled."""
        ended = [
            key
            for key, entry in self._entries.items()
            # fixed: [value, end]; sliding: [start, current, previous, end], two windows long
            if (entry[1] if len(entry) == 2 else 2 * entry[3] - entry[0]) <= now
        ]
        for key in ended:
            del self._entries[key]
        self._sweep_at = max(4096, 2 * len(self._entries))


class RedisCounters(GiveBackCounters):
    """All counters of a request in one atomic Lua call: one round trip.

    On Redis Cluster a script may only touch keys of one slot. Callers tag the counters of a
    request into one slot (``{...}``); counters that are not are taken one by one and given
    back (:class:`GiveBackCounters`) rather than failing the request.
    """

    storage: RedisStorage

    def __init__(self, storage: RedisStorage) -> None:
        super().__init__(storage)
        self._script: Any = None
        client: Any = storage.get_connection()
        #: The cluster client's slot function, ``None`` on a single Redis (and Sentinel).
        self._slot_of: Any = getattr(client, "keyslot", None) if _is_cluster(client) else None

    def _one_slot(self, counters: Sequence[Counter]) -> bool:
        slot_of = self._slot_of
        if slot_of is None or len(counters) < 2:
            return True
        prefixed = self.storage.prefixed_key
        return len({slot_of(prefixed(counter.key)) for counter in counters}) == 1

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        if self._slot_of is not None and not self._one_slot(counters):
            return super().take(counters, amount)
        storage = self.storage
        if self._script is None:
            client: Any = storage.get_connection()
            self._script = caller_for(client, TAKE_ALL_SCRIPT) or client.register_script(
                TAKE_ALL_SCRIPT
            )
        arguments: list[int] = [amount]
        for counter in counters:
            arguments += (counter.limit, counter.window_seconds, 1 if counter.sliding else 0)
        refused, values, ttls = parse_take_reply(
            self._script(
                keys=[storage.prefixed_key(counter.key) for counter in counters], args=arguments
            )
        )
        now = windows.now()
        resets = tuple(
            now + (ttl / 1000 if ttl > 0 or counter.sliding else counter.window_seconds)
            for counter, ttl in zip(counters, ttls, strict=True)
        )
        return Outcome(
            int(refused) - 1 if refused else None, tuple(int(value) for value in values), resets
        )

    def close(self) -> None:
        if isinstance(self._script, ScriptCaller):
            self._script.close()

    def peek(self, counter: Counter) -> tuple[int, float]:
        connection: Any = self.storage.get_connection()
        key = self.storage.prefixed_key(counter.key)
        if counter.sliding:  # read with this process's clock (the script uses Redis')
            stored_start, current, previous = connection.hmget(key, "s", "c", "p")
            now = windows.now()
            window = counter.window_seconds
            start = windows.window_start(now, window)
            stored = float(stored_start or 0)
            current_count = int(current or 0) if stored == start else 0
            previous_count = int(previous or 0) if stored == start else 0
            if stored == start - window:
                previous_count = int(current or 0)
            return windows.sliding_view(
                counter.limit, window, start, previous_count, current_count, now
            )
        with connection.pipeline(transaction=False) as pipeline:
            pipeline.get(key)
            pipeline.pttl(key)
            value, ttl = pipeline.execute()
        return int(value or 0), time.time() + (ttl / 1000 if ttl > 0 else 0)


def counters_for(storage: Storage | None) -> Counters:
    """The fastest exact implementation for ``storage`` (``None``: our own, in memory)."""
    if storage is None:
        return LocalCounters()
    if isinstance(storage, MemoryStorage):
        return MemoryCounters(storage)
    if isinstance(storage, RedisStorage):
        return RedisCounters(storage)
    return GiveBackCounters(storage)


def is_remote(counters: Counters) -> bool:
    """Whether taking a unit costs a round trip to another process (leases pay off)."""
    return not isinstance(counters, (LocalCounters, MemoryCounters))


def _is_cluster(client: Any) -> bool:
    """Whether ``client`` is a redis-py (or valkey) cluster client, by its class names."""
    return any(cls.__name__ in {"RedisCluster", "ValkeyCluster"} for cls in type(client).__mro__)


def _base_exceptions(storage: Storage) -> tuple[type[BaseException], ...]:
    """Everything the storage's client raises when it cannot count: ``limits``' own errors,
    the client's base error, and redis-py's cluster errors, which do not derive from it (a
    cross-slot or routing failure must fail open or closed like a lost server, not be a 500).
    """
    base = storage.base_exceptions
    errors: list[type[BaseException]] = [StorageError]
    errors += base if isinstance(base, tuple) else (base,)
    if isinstance(storage, RedisStorage) and RedisClusterException is not None:
        errors.append(RedisClusterException)
    return tuple(errors)
