"""Several fixed-window counters taken together: all of them, or none.

A request is under a key's limit, its organization's limit and a monthly quota at once. If one
of them refuses, the others must not be consumed by the refused request, and each limit must
stay exact when many workers race for its last unit. So the counters of one request are
checked and incremented as one operation:

- Redis (and Sentinel or Cluster, which use the same client): one Lua script that reads every
  counter, and increments them all only if none would pass its limit. It is atomic on the server
  and costs one round trip. The keys of one request share a ``{hash tag}`` so that a cluster
  keeps them in one slot.
- In-process memory: the same check-then-increment under one lock.
- Any other ``limits`` storage: increment in order and give back what was taken as soon as one
  refuses. Each limit stays exact (a unit counts only once its increment stayed within the
  limit); a concurrent request may see a unit that is about to be given back.

Windows are fixed and start at a counter's first hit, as in ``limits``' fixed-window strategy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage

#: Reads every counter; increments them all only if none would pass its limit. Returns the index
#: (1-based) of the first counter that refused or 0, the counters' values, and their PTTLs.
TAKE_ALL_SCRIPT = """
local amount = tonumber(ARGV[1])
local refused = 0
local values = {}
local ttls = {}
for i = 1, #KEYS do
    values[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
    if refused == 0 and values[i] + amount > tonumber(ARGV[2 * i]) then
        refused = i
    end
end
for i = 1, #KEYS do
    if refused == 0 then
        values[i] = redis.call('INCRBY', KEYS[i], amount)
    end
    local ttl = redis.call('PTTL', KEYS[i])
    if refused == 0 and ttl < 0 then
        redis.call('EXPIRE', KEYS[i], ARGV[2 * i + 1])
        ttl = tonumber(ARGV[2 * i + 1]) * 1000
    end
    ttls[i] = ttl
end
return {refused, values, ttls}
"""


@dataclass(frozen=True, slots=True)
class Counter:
    """One limited counter: where it is stored, how many units a window allows, how long."""

    key: str
    limit: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :meth:`Counters.take` found: which counter refused (if any), values and resets.

    ``values[i]`` is counter ``i`` after the request (unchanged if it was refused);
    ``resets[i]`` is when its window ends, as a POSIX timestamp.
    """

    refused: int | None
    values: tuple[int, ...]
    resets: tuple[float, ...]


class Counters:
    """Increment-and-give-back over any ``limits`` storage (the fallback)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        #: What the storage raises when its server cannot be reached.
        self.errors: tuple[type[BaseException], ...] = _base_exceptions(storage)

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        """Consume ``amount`` from every counter, or from none if one would pass its limit."""
        storage = self.storage
        taken: list[Counter] = []
        values: list[int] = []
        refused = None
        for index, counter in enumerate(counters):
            value = storage.incr(counter.key, counter.window_seconds, amount=amount)
            taken.append(counter)
            if value > counter.limit:
                refused = index
                self._give_back(taken, amount)
                values = [storage.get(counter.key) for counter in counters]
                break
            values.append(value)
        resets = tuple(storage.get_expiry(counter.key) for counter in counters)
        return Outcome(refused, tuple(values), resets)

    def peek(self, counter: Counter) -> tuple[int, float]:
        """The counter's value and window end, without consuming."""
        return self.storage.get(counter.key), self.storage.get_expiry(counter.key)

    def _give_back(self, taken: Sequence[Counter], amount: int) -> None:
        decrement = getattr(self.storage, "decr", None)
        for counter in taken:
            if decrement is not None:
                decrement(counter.key, amount)
            else:
                self.storage.incr(counter.key, counter.window_seconds, amount=-amount)


class MemoryCounters(Counters):
    """Check-then-increment under one lock: exact and never a transient over-count."""

    storage: MemoryStorage

    def __init__(self, storage: MemoryStorage) -> None:
        super().__init__(storage)
        self._lock = threading.Lock()

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        storage = self.storage
        with self._lock:
            values = [storage.get(counter.key) for counter in counters]
            refused = next(
                (
                    index
                    for index, (counter, value) in enumerate(zip(counters, values, strict=True))
                    if value + amount > counter.limit
                ),
                None,
            )
            if refused is None:
                values = [
                    storage.incr(counter.key, counter.window_seconds, amount=amount)
                    for counter in counters
                ]
            resets = tuple(storage.get_expiry(counter.key) for counter in counters)
        return Outcome(refused, tuple(values), resets)


class RedisCounters(Counters):
    """All counters of a request in one atomic Lua call: one round trip."""

    storage: RedisStorage

    def __init__(self, storage: RedisStorage) -> None:
        super().__init__(storage)
        self._script: Any = None

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        storage = self.storage
        if self._script is None:
            self._script = storage.get_connection().register_script(TAKE_ALL_SCRIPT)
        arguments: list[int] = [amount]
        for counter in counters:
            arguments += (counter.limit, counter.window_seconds)
        refused, values, ttls = self._script(
            keys=[storage.prefixed_key(counter.key) for counter in counters], args=arguments
        )
        now = time.time()
        resets = tuple(
            now + (ttl / 1000 if ttl > 0 else counter.window_seconds)
            for counter, ttl in zip(counters, ttls, strict=True)
        )
        return Outcome(
            int(refused) - 1 if refused else None, tuple(int(value) for value in values), resets
        )

    def peek(self, counter: Counter) -> tuple[int, float]:
        connection = self.storage.get_connection()
        key = self.storage.prefixed_key(counter.key)
        with connection.pipeline(transaction=False) as pipeline:
            pipeline.get(key)
            pipeline.pttl(key)
            value, ttl = pipeline.execute()
        return int(value or 0), time.time() + (ttl / 1000 if ttl > 0 else 0)


def counters_for(storage: Storage) -> Counters:
    """The fastest exact implementation for ``storage``."""
    if isinstance(storage, MemoryStorage):
        return MemoryCounters(storage)
    if isinstance(storage, RedisStorage):
        return RedisCounters(storage)
    return Counters(storage)


def _base_exceptions(storage: Storage) -> tuple[type[BaseException], ...]:
    base = storage.base_exceptions
    return (StorageError, *(base if isinstance(base, tuple) else (base,)))
