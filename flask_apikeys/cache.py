"""An in-process cache of verified keys, so a busy key costs no database query.

Entries live at most ``APIKEYS_CACHE_TTL`` seconds (1 by default). That bound is the longest a
revocation, rotation or organization change made through *another* process can go unnoticed; in
this process the service drops the affected entries at once. Expiry is not cached: it is checked
against the clock on every request.
"""

from __future__ import annotations

import threading
import time
import uuid

from .identity import VerifiedKey


class VerifiedKeyCache:
    """Maps a key's digest to its snapshot for a bounded time and a bounded number of keys."""

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, VerifiedKey]] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> VerifiedKey | None:
        """The snapshot for ``digest`` if it was stored less than the TTL ago."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        stored_at, key = entry
        if time.monotonic() - stored_at >= self.ttl_seconds:
            self._entries.pop(digest, None)
            return None
        return key

    def put(self, digest: bytes, key: VerifiedKey) -> None:
        """Remember ``key``; a full cache is emptied rather than scanned for the oldest entry."""
        if self.ttl_seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = (time.monotonic(), key)

    def forget_key(self, key_id: uuid.UUID) -> None:
        """Drop a key at once (after revocation or rotation in this process)."""
        self._forget(lambda key: key.id == key_id)

    def forget_organization(self, organization_id: uuid.UUID) -> None:
        """Drop every key of an organization (after its plan, limits or state changed)."""
        self._forget(lambda key: key.organization.id == organization_id)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()

    def _forget(self, matches: object) -> None:
        with self._lock:
            for digest, (_, key) in list(self._entries.items()):
                if matches(key):  # type: ignore[operator]
                    del self._entries[digest]
