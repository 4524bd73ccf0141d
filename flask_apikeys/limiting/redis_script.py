"""One Lua script on Redis (:data:`TAKE_ALL_SCRIPT`: all counters of a request, or none),
called with as little client work as a round trip allows.

The rate-limit check is one ``EVALSHA`` per request, and through redis-py's client it cost
about 210 µs of CPU here, more than the round trip itself: a poll of the socket at every pool
checkout, packing ~15 arguments, parsing a nested reply, instrumentation. :class:`ScriptCaller`
keeps what stays the same between calls:

- connections of its own, on a lock-free free list: taken for one call, given back only after
  a complete reply, so one that is given back has nothing left to read and needs no probe;
  a connection that failed is closed and dropped. After a fork the child starts a new list.
- the command's framing (RESP: ``*<count>``, then ``$<length>`` and the bytes of each part)
  up to its keys, and its packed arguments (the limits and windows, the same for every key
  of a configuration): a cold key's command only frames its keys anew, where redis-py's
  ``pack_command`` cost a tenth of the whole call.

Connections are made by redis-py (``pool.connection_class`` with the pool's settings: host,
TLS, password, database, timeouts), so every URL the client accepts works the same. Only a
plain ``redis.Redis`` on a plain ``ConnectionPool`` gets here; Sentinel, Cluster and Valkey
clients keep redis-py's script object (:func:`caller_for` returns ``None``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..boundedcache import BoundedCache
from ..forking import after_fork_in_child

try:  # the redis extra; without it there is no Redis storage to call
    import redis
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]

#: How many packed argument lists are remembered (one per limits configuration in use).
MAX_PACKED = 4096

#: Reads every counter; increments them all only if none would pass its limit. Returns, as one
#: string of space-separated integers (:func:`parse_take_reply`), the index (1-based) of the
#: first counter that refused or 0, the counters' values, and the milliseconds until each
#: resets. ``ARGV``: the amount, then per counter its limit, window and strategy
#: (1: sliding, a hash of the window's start ``s``, current ``c`` and previous ``p`` counts,
#: on Redis' own clock; 0: fixed, a string and its TTL). :mod:`~.windows` has the arithmetic.
TAKE_ALL_SCRIPT = """
local amount = tonumber(ARGV[1])
local refused = 0
local values, resets, starts, currents, previouses, useds = {}, {}, {}, {}, {}, {}
local now = nil
for i = 1, #KEYS do
    local limit, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
    if ARGV[3 * i + 1] == '1' then
        if now == nil then
            local clock = redis.call('TIME')
            now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
        end
        local start = math.floor(now / window) * window
        local stored = redis.call('HMGET', KEYS[i], 's', 'c', 'p')
        local current, previous = 0, 0
        local stored_start = tonumber(stored[1])
        if stored_start == start then
            current, previous = tonumber(stored[2]), tonumber(stored[3])
        elseif stored_start == start - window then
            previous = tonumber(stored[2])
        end
        starts[i], currents[i], previouses[i] = start, current, previous
        useds[i] = previous * (1 - (now - start) / window) + current
        values[i] = useds[i]
    else
        values[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
        useds[i] = values[i]
    end
    if refused == 0 and useds[i] + amount > limit then
        refused = i
    end
end
for i = 1, #KEYS do
    local limit, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
    if ARGV[3 * i + 1] == '1' then
        local start, current, previous = starts[i], currents[i], previouses[i]
        local used = useds[i]
        if refused == 0 then
            current = current + amount
            used = used + amount
            redis.call('HSET', KEYS[i], 's', start, 'c', current, 'p', previous)
            redis.call('PEXPIRE', KEYS[i], math.ceil((start + 2 * window - now) * 1000))
        end
        local left = math.floor(limit - used)
        if left < 0 then left = 0 end
        values[i] = limit - left
        local reset = start + window
        local wanted = 0
        if refused == i then wanted = amount elseif left == 0 then wanted = 1 end
        if wanted > 0 then
            local target = limit - wanted
            if current <= target then
                if previous > 0 then
                    reset = start + window * (1 - (target - current) / previous)
                else
                    reset = start
                end
            elseif target < 0 then
                reset = start + 2 * window
            else
                reset = start + window + window * (1 - target / current)
            end
        end
        resets[i] = math.ceil((reset - now) * 1000)
    else
        if refused == 0 then
            values[i] = redis.call('INCRBY', KEYS[i], amount)
        end
        local ttl = redis.call('PTTL', KEYS[i])
        if refused == 0 and ttl < 0 then
            redis.call('EXPIRE', KEYS[i], window)
            ttl = window * 1000
        end
        resets[i] = ttl
    end
end
-- One bulk string of integers rather than nested arrays: a client parses it with one read
-- and a split (redis-py parses a nested reply element by element, in Python).
local reply = {refused}
for i = 1, #KEYS do reply[#reply + 1] = string.format('%d', values[i]) end
for i = 1, #KEYS do reply[#reply + 1] = string.format('%d', resets[i]) end
return table.concat(reply, ' ')
"""


def parse_take_reply(reply: bytes | str) -> tuple[int, list[int], list[int]]:
    """:data:`TAKE_ALL_SCRIPT`'s reply: the refusing counter (1-based, 0: none), the values,
    the milliseconds until each counter resets."""
    numbers = [int(field) for field in reply.split()]
    count = (len(numbers) - 1) // 2
    return numbers[0], numbers[1 : 1 + count], numbers[1 + count :]


class ScriptCaller:
    """Runs one Lua script (``EVALSHA``, loading it with ``EVAL`` when Redis lacks it)."""

    def __init__(self, pool: Any, script: str) -> None:
        self._pool = pool
        self._script = script
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._packer = pool.connection_class(**pool.connection_kwargs)  # packs, never connects
        self._encode = self._packer.encoder.encode  # the client's encoding of a str or int
        self._free: deque[Any] = deque()
        after_fork_in_child(self, ScriptCaller._drop_parent_connections)
        #: (number of keys, *arguments) → the command up to its keys, the arguments after them.
        self._packed: BoundedCache[tuple[Any, ...], tuple[bytes, bytes]] = BoundedCache(MAX_PACKED)

    def __call__(self, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        """The script's reply; a failed call raises redis-py's error (a ``RedisError``).

        A connection that Redis closed since its last use (a restart, an idle timeout) fails
        before the script could run, so that call is made once more on a new connection;
        a timeout is not retried (the script may have run).
        """
        lookup = (len(keys), *args)
        framing = self._packed.get(lookup)
        if framing is None:
            framing = self._packed.put(lookup, self._framing(len(keys), args))
        head, tail = framing
        encode = self._encode
        packed = [head + b"".join([_bulk(encode(key)) for key in keys]) + tail]
        try:
            return self._call(packed, keys, args)
        except redis.TimeoutError:
            raise
        except redis.ConnectionError:
            return self._call(packed, keys, args)

    def close(self) -> None:
        """Close every idle connection (those in use close when their call fails or ends)."""
        while self._free:
            self._free.popleft().disconnect()

    def _call(self, packed: list[bytes], keys: Sequence[str], args: Sequence[int | str]) -> Any:
        connection = self._take_connection()
        try:
            connection.send_packed_command(packed, check_health=False)
            try:
                reply = connection.read_response()
            except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts
                connection.send_packed_command(self._pack("EVAL", self._script, keys, args))
                reply = connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        self._free.append(connection)
        return reply

    def _drop_parent_connections(self) -> None:
        """In a forked child: the parent's sockets are not ours to use (nor to shut down)."""
        self._free = deque()

    def _take_connection(self) -> Any:
        try:
            return self._free.popleft()
        except IndexError:
            pool = self._pool
            return pool.connection_class(**pool.connection_kwargs)

    def _framing(self, key_count: int, args: Sequence[int | str]) -> tuple[bytes, bytes]:
        """``EVALSHA``'s RESP array up to its keys, and its arguments packed."""
        parts = 3 + key_count + len(args)  # EVALSHA, the digest, the number of keys
        head = b"*%d\r\n" % parts + b"".join(
            _bulk(self._encode(part)) for part in ("EVALSHA", self._sha, key_count)
        )
        return head, b"".join(_bulk(self._encode(arg)) for arg in args)

    def _pack(
        self, command: str, script: str, keys: Sequence[str], args: Sequence[int | str]
    ) -> list[bytes]:
        return list(self._packer.pack_command(command, script, len(keys), *keys, *args))


def _bulk(part: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(part), part)


def caller_for(client: Any, script: str) -> ScriptCaller | None:
    """A :class:`ScriptCaller` for a plain redis-py client, else ``None``."""
    if redis is None or type(client) is not redis.Redis:
        return None
    pool = client.connection_pool
    if type(pool) is not redis.ConnectionPool:
        return None
    return ScriptCaller(pool, script)
