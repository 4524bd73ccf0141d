"""One bounded cache for the small in-process caches (answers, statements, packed commands).

A cache that grows with client input (forwarded prefixes, token ids, scope sets, key
snapshots) needs a bound. When a new entry would pass it the cache is emptied rather than
scanned for the oldest entry: the entries are cheap to rebuild, and emptying keeps ``put`` a
constant-time operation with no bookkeeping on the hits, which are the common case.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``max_entries`` entries and, if sizes are given to :meth:`put`, ``max_bytes``.

    Not locked: a lookup or a store is a single dict operation. A caller whose entries must
    not be lost to a concurrent ``put`` holds its own lock around both.
    """

    __slots__ = ("_entries", "max_bytes", "max_entries", "size")

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        self._entries: dict[K, V] = {}
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: The sizes given to :meth:`put` since the cache was last emptied.
        self.size = 0

    def get(self, key: K) -> V | None:
        """The entry for ``key``, or ``None``."""
        return self._entries.get(key)

    def put(self, key: K, value: V, size: int = 0) -> V:
        """Remember ``value`` (counted as ``size`` bytes); empty the cache first if it is full."""
        if len(self._entries) >= self.max_entries or (
            self.max_bytes is not None and self.size + size > self.max_bytes
        ):
            self.clear()
        self._entries[key] = value
        self.size += size
        return value

    def pop(self, key: K) -> V | None:
        """Forget ``key``; its entry, or ``None``. (Its size stays counted until emptied.)"""
        return self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
