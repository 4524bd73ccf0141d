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

Windows are fixed and start at a counter's first hit, as in ``limits``' fixed-window strategy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage

from .redis_script import ScriptCaller, caller_for

try:  # the redis extra; without it there is no Redis storage to count in
    from redis.exceptions import RedisClusterException
except ImportError:  # pragma: no cover - exercised only without the extra
    RedisClusterException = None  # type: ignore[assignment,misc]

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

    def close(self) -> None:
        """Close connections of our own (the storage's client is closed by its owner)."""


class GiveBackCounters(Counters):
    """Increment-and-give-back over any ``limits`` storage (the fallback)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.errors = _base_exceptions(storage)

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
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
        return self.storage.get(counter.key), self.storage.get_expiry(counter.key)

    def _give_back(self, taken: Sequence[Counter], amount: int) -> None:
        decrement = getattr(self.storage, "decr", None)
        for counter in taken:
            if decrement is not None:
                decrement(counter.key, amount)
            else:
                self.storage.incr(counter.key, counter.window_seconds, amount=-amount)


class MemoryCounters(GiveBackCounters):
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


class LocalCounters(Counters):
    """The ``memory://`` storage we own: plain dicts under one lock, a tenth of the cost of
    going through ``limits``' ``MemoryStorage`` (which also serves other strategies)."""

    def __init__(self) -> None:
        self._entries: dict[str, list[Any]] = {}  # key → [value (an int), window end]
        self._lock = threading.Lock()
        self._sweep_at = 4096

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        now = time.time()
        entries = self._entries
        refused = None
        with self._lock:
            found = []
            for index, counter in enumerate(counters):
                entry = entries.get(counter.key)
                if entry is not None and entry[1] <= now:
                    entry = None
                found.append(entry)
                if refused is None and (entry[0] if entry else 0) + amount > counter.limit:
                    refused = index
            if refused is None:
                for index, counter in enumerate(counters):
                    entry = found[index]
                    if entry is None:
                        found[index] = entries[counter.key] = [amount, now + counter.window_seconds]
                    else:
                        entry[0] += amount
                if len(entries) >= self._sweep_at:
                    self._sweep(now)
        values = []
        resets = []
        for index, entry in enumerate(found):
            if entry is None:
                values.append(0)
                resets.append(now + counters[index].window_seconds)
            else:
                values.append(entry[0])
                resets.append(entry[1])
        return Outcome(refused, tuple(values), tuple(resets))

    def peek(self, counter: Counter) -> tuple[int, float]:
        entry = self._entries.get(counter.key)
        if entry is None or entry[1] <= time.time():
            return 0, time.time()
        return int(entry[0]), entry[1]

    def _sweep(self, now: float) -> None:
        """Drop ended windows; called under the lock when the table has doubled."""
        for key in [key for key, entry in self._entries.items() if entry[1] <= now]:
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

    def close(self) -> None:
        if isinstance(self._script, ScriptCaller):
            self._script.close()

    def peek(self, counter: Counter) -> tuple[int, float]:
        connection: Any = self.storage.get_connection()
        key = self.storage.prefixed_key(counter.key)
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
