"""One bounded cache for the small in-process caches (answers, statements, packed commands).

A cache that grows with client input (forwarded prefixes, token ids, scope sets, key
snapshots) needs a bound. When a new entry would pass it the cache is emptied rather than
scanned for the oldest entry: the entries are cheap to rebuild, and emptying keeps ``put`` a
constant-time operation with no bookkeeping on the hits, which are the common case.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """A dict of at most ``max_entries`` entries and, if :meth:`put` is given sizes,
    ``max_bytes``; lookups are the dict's own.

    Not locked: a lookup or a store is a single dict operation. A caller whose entries must
    not be lost to a concurrent ``put`` holds its own lock around both.
    """

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: The sizes given to :meth:`put` since the cache was last emptied.
        self.size = 0

    def put(self, key: K, value: V, size: int = 0) -> V:
        """Remember ``value`` (counted as ``size`` bytes); empty the cache first if it is full."""
        if len(self) >= self.max_entries or (
            self.max_bytes is not None and self.size + size > self.max_bytes
        ):
            self.clear()
        self[key] = value
        self.size += size
        return value

    def clear(self) -> None:
        """Forget everything."""
        super().clear()
        self.size = 0
