"""An in-process cache of verified keys, so a busy key costs no database query.

Entries live at most ``APIKEYS_CACHE_TTL`` seconds (1 by default). In this process the service
drops the entries a revocation, rotation or organization change affects at once, and announces
the change (:mod:`flask_apikeys.cache_generation`); other processes that the announcement
reaches empty their cache within ``APIKEYS_CACHE_CHECK_INTERVAL`` seconds, the others when the
entries expire. Expiry is not cached: it is checked against the clock on every request.

Beside the keys, the cache holds the organizations they belong to, by id
(:meth:`VerifiedKeyCache.organization`): a key that misses the cache is then read without its
organization's columns (no join, eight columns fewer) when another key of its organization was
read less than the TTL ago. Organizations live and go with the keys: the same TTL, emptied by
the same announcements, and an organization's change drops its entry with its keys' entries. A
key's entry is dated by its organization's entry when that is older, so nothing a request sees
is older than the TTL.

The cache is bounded by entries *and* by memory: a key may hold hundreds of scopes and kilobytes
of metadata, so 10,000 entries alone could mean hundreds of megabytes per worker.
:func:`approximate_size` is what a snapshot is counted as, here and in the other caches of
snapshots (narrowed token snapshots, the rate limiter's per-snapshot limits).
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection

from .boundedcache import BoundedCache
from .cache_generation import Generation
from .config_parsers import Plan
from .identity import OrganizationInfo, VerifiedKey

#: The most memory (by :func:`approximate_size`) a cache of snapshots holds before it is emptied.
MAX_CACHE_BYTES = 32 * 1024 * 1024
#: How many digests that matched no key are remembered (:meth:`VerifiedKeyCache.is_unknown`).
MAX_UNKNOWN = 1000
#: How many organizations are remembered (:meth:`VerifiedKeyCache.organization`); a full
#: cache of them is emptied.
MAX_ORGANIZATIONS = 4096
#: What the cache keeps of an organization: its view, its effective plan.
OrganizationEntry = tuple[OrganizationInfo, Plan]
#: What a snapshot costs besides its collections (the objects, the organization, short strings).
SNAPSHOT_OVERHEAD = 1024


def strings_size(strings: Collection[str]) -> int:
    """The memory of a collection of strings: the container and each string."""
    return sys.getsizeof(strings) + sum(map(sys.getsizeof, strings))


#: The snapshot :func:`approximate_size` sized last, and its size. A cache miss sizes its new
#: snapshot for the key cache, then the rate limiter sizes the same one for its own cache: a
#: snapshot is immutable, so the second answer is the first (one entry: it keeps at most one
#: snapshot alive, and a tuple is replaced in one store, whatever the threads do).
_last_sized: tuple[VerifiedKey | None, int] = (None, 0)


def approximate_size(key: VerifiedKey) -> int:
    """Roughly how many bytes a snapshot keeps alive (its scopes dominate, then metadata)."""
    global _last_sized
    last_key, last_size = _last_sized
    if last_key is key:
        return last_size
    size = _computed_size(key)
    _last_sized = (key, size)
    return size


def _computed_size(key: VerifiedKey) -> int:
    """:func:`approximate_size`, computed."""
    size = SNAPSHOT_OVERHEAD + strings_size(key.scopes)
    if key.own_scopes is not key.scopes:
        size += strings_size(key.own_scopes)
    if key.metadata:
        # Text is a fair proxy for parsed JSON's size; metadata is at most a few kilobytes.
        size += 4 * len(json.dumps(key.metadata, default=str))
    return size + 128 * (len(key.allowed_networks) + len(key.roles))


class LookupCount(itertools.count):  # type: ignore[type-arg]
    """A count that many threads add to at once, without a lock: ``next(count)`` adds one.

    ``count += 1`` on an int is a read and a write: two threads can both read 5 and both write
    6. Taking a number from :func:`itertools.count` is one C call, which the GIL never splits;
    the count is how many numbers were taken. A lock would cost each cache lookup ~3 times as
    many instructions as this (``bench/README.md``).
    """

    def __init__(self) -> None:
        self._reads = 0
        self._read_lock = threading.Lock()

    @property
    def value(self) -> int:
        """How many were added. Reading takes a number too, so earlier reads are subtracted
        (under a lock: reads are rare, additions are not)."""
        with self._read_lock:
            taken: int = next(self) - self._reads
            self._reads += 1
        return taken


_NOT_READ = object()


class VerifiedKeyCache:
    """Maps a key's digest to its snapshot for a bounded time, a bounded number of keys and a
    bounded amount of memory.

    :param generation: where changes are announced and read (``None``: this process only).
    :param check_interval: seconds between two reads of ``generation``.
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = 10_000,
        max_bytes: int = MAX_CACHE_BYTES,
        *,
        generation: Generation | None = None,
        check_interval: float = 0.5,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.generation = generation
        self.check_interval = check_interval
        #: The monotonic clock entries are dated by (a benchmark replaces it).
        self.clock: Callable[[], float] = time.monotonic
        self._next_check = 0.0
        self._seen: object = _NOT_READ
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: The :func:`approximate_size` of the entries held, summed.
        self.size = 0
        #: Lookups that found a fresh snapshot, and those that did not (for the metrics).
        self.hits = LookupCount()
        self.misses = LookupCount()
        self._entries: dict[bytes, tuple[float, VerifiedKey, int]] = {}
        #: digest → when a lookup found no key with it (see :meth:`is_unknown`).
        self._unknown: BoundedCache[bytes, float] = BoundedCache(MAX_UNKNOWN)
        #: organization id → (when stored, its entry); see :meth:`organization`.
        self._organizations: BoundedCache[uuid.UUID, tuple[float, OrganizationEntry]]
        self._organizations = BoundedCache(MAX_ORGANIZATIONS)
        #: Changes made so far to the organizations: a load that began before one is not kept
        #: (see :meth:`put_organization`).
        self.organization_changes = 0
        #: Changes dropped from the cache so far (a key's, an organization's, everything): a
        #: key read before one is not kept (see :meth:`put`).
        self.changes = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> VerifiedKey | None:
        """The snapshot for ``digest`` if it was stored less than the TTL ago and no change
        was announced since."""
        now = self.clock()
        if now >= self._next_check and self.generation is not None:
            self._check_generation(now)
        entry = self._entries.get(digest)
        if entry is None:
            next(self.misses)
            return None
        stored_at, key, _ = entry
        if now - stored_at >= self.ttl_seconds:
            next(self.misses)
            with self._lock:
                if self._entries.pop(digest, None) is not None:
                    self.size -= entry[2]
            return None
        next(self.hits)
        return key

    def is_unknown(self, digest: bytes) -> bool:
        """Whether ``digest`` was looked up and not found less than the TTL ago.

        A client retrying a mistyped or deleted key costs no query. Safe to remember: a key
        is random, so a digest no row had can only start to match if that very key is created.
        """
        stored_at = self._unknown.get(digest)
        return stored_at is not None and self.clock() - stored_at < self.ttl_seconds

    def put_unknown(self, digest: bytes) -> None:
        """Remember that no stored key has ``digest`` (kept apart, so that a flood of made-up
        keys never pushes the keys in use out of the cache)."""
        if self.ttl_seconds > 0:
            self._unknown.put(digest, self.clock())

    @property
    def organization_count(self) -> int:
        """How many organizations are held (at most :data:`MAX_ORGANIZATIONS`)."""
        return len(self._organizations)

    def organization(self, organization_id: uuid.UUID) -> tuple[float, OrganizationEntry] | None:
        """When the organization's entry was stored and the entry, if that was less than the
        TTL ago and no change was announced since (checked by the :meth:`get` that missed
        just before)."""
        known = self._organizations.get(organization_id)
        if known is not None and self.clock() - known[0] >= self.ttl_seconds:
            return None
        return known

    def put_organization(
        self, organization_id: uuid.UUID, entry: OrganizationEntry, changes_before: int
    ) -> float:
        """Remember an organization read from the database; return when it was stored.

        :param changes_before: :attr:`organization_changes` read before the organization was:
            if a change came in between, the row read may predate it, and is not kept.
        """
        now = self.clock()
        if self.ttl_seconds > 0:
            with self._lock:
                if changes_before == self.organization_changes:
                    self._organizations.put(organization_id, (now, entry))
        return now

    def put(
        self,
        digest: bytes,
        key: VerifiedKey,
        stored_at: float | None = None,
        changes_before: int | None = None,
    ) -> None:
        """Remember ``key``; a full cache is emptied rather than scanned for the oldest entry.

        :param stored_at: when what the snapshot holds was read, if before now (the cached
            organization it was built with): the entry expires as if stored then.
        :param changes_before: :attr:`changes` read before the key was: if the cache dropped
            anything in between (a revocation, an announced change), the row read may predate
            it and is not kept; it would otherwise outlive the change until the TTL ends.
        """
        if self.ttl_seconds <= 0:
            return
        size = approximate_size(key)
        with self._lock:
            if changes_before is not None and changes_before != self.changes:
                return
            if len(self._entries) >= self.max_entries or self.size + size > self.max_bytes:
                self._entries.clear()
                self.size = 0
            previous = self._entries.get(digest)
            if previous is not None:
                self.size -= previous[2]
            self._entries[digest] = (self.clock() if stored_at is None else stored_at, key, size)
            self.size += size

    def forget_key(self, key_id: uuid.UUID) -> None:
        """Drop a key at once (after revocation or rotation in this process); tell the others."""
        self._forget(lambda key: key.id == key_id)
        self._announce()

    def forget_organization(self, organization_id: uuid.UUID) -> None:
        """Drop every key of an organization (after its plan, limits or state changed); tell
        the others."""
        with self._lock:
            self.organization_changes += 1
            self.changes += 1
            self._organizations.pop(organization_id, None)
        self._forget(lambda key: key.organization.id == organization_id)
        self._announce()

    def clear(self) -> None:
        """Forget everything (and tell the other processes to)."""
        self._empty()
        self._announce()

    def _empty(self) -> None:
        with self._lock:
            self._entries.clear()
            self.size = 0
            self.organization_changes += 1
            self.changes += 1
            self._organizations.clear()

    def _announce(self) -> None:
        if self.generation is not None:
            self.generation.announce()

    def _check_generation(self, now: float) -> None:
        """Empty the cache if a change was announced since the last check."""
        self._next_check = now + self.check_interval
        generation = self.generation.current()  # type: ignore[union-attr]
        if generation != self._seen:
            if self._seen is not _NOT_READ:
                self._empty()
            self._seen = generation

    def _forget(self, matches: object) -> None:
        with self._lock:
            self.changes += 1
            for digest, (_, key, size) in list(self._entries.items()):
                if matches(key):  # type: ignore[operator]
                    del self._entries[digest]
                    self.size -= size
