"""How a change to keys in one process reaches the key caches of the others within a second.

Every process caches verified keys for ``APIKEYS_CACHE_TTL`` seconds. When a key is revoked,
rotated or changed, or an organization changes, the process that made the change drops its
own entries at once and *announces* it here; every process *checks* for an announcement at
most every ``APIKEYS_CACHE_CHECK_INTERVAL`` seconds (half a second by default) on a request
that uses the cache, and empties its cache when one came. So a long cache TTL no longer means
a long window for a revoked key.

Where the announcement lives decides which deployments it reaches:

- **a file** next to the system's temporary files, named after the database
  (:class:`FileGeneration`): every process of one host, whatever its server (gunicorn, uWSGI,
  several apps on one database). A check is one ``stat`` call.
- **Redis**, when the rate limits use it (:class:`RedisGeneration`, on top of the file): every
  process on every host. A check is one ``GET``, once per interval per process.

Hosts that share a database but no Redis only see each other's changes when the cache entries
expire: keep ``APIKEYS_CACHE_TTL`` short there (the default 1 s).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol

logger = logging.getLogger("flask_apikeys")
REDIS_KEY = "apikeys:cache-generation"
#: How long the Redis counter lives after its last change (it is only compared, never summed).
REDIS_KEY_SECONDS = 30 * 24 * 3600


class Generation(Protocol):
    """Something every process can read cheaply that changes when keys change."""

    def current(self) -> object:
        """A value that differs from the last one read if a change was announced since."""

    def announce(self) -> None:
        """Tell every process that cached keys may be stale."""


class FileGeneration:
    """The announcement as a file replaced on each change; a check is one ``stat``.

    :param path: the file; by default one in the temporary directory named after ``database``.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def for_database(cls, database: str) -> FileGeneration:
        """The file shared by every process of this host that uses ``database`` (its URL)."""
        name = hashlib.sha256(database.encode()).hexdigest()[:24]
        return cls(os.path.join(tempfile.gettempdir(), f"flask-apikeys-{name}.generation"))

    def current(self) -> object:
        try:
            status = os.stat(self.path)
        except OSError:
            return None  # nothing announced yet on this host
        return (status.st_ino, status.st_mtime_ns, status.st_ctime_ns)

    def announce(self) -> None:
        # A new file under the name (a new inode), atomically: never half-written.
        temporary = f"{self.path}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            with open(temporary, "w") as file:
                file.write(secrets.token_hex(8))
            os.replace(temporary, self.path)
        except OSError as error:
            logger.warning(
                "Could not announce a key change in %s (%s): other processes see it when "
                "their cache entries expire",
                self.path,
                type(error).__name__,
            )


class RedisGeneration:
    """The announcement as a Redis counter, read through the rate limits' ``limits`` storage.

    :param find_storage: returns the storage and the errors it raises, or ``None`` when the
        rate limits count in the process; called on first use.
    """

    def __init__(
        self, find_storage: Callable[[], tuple[Any, tuple[type[BaseException], ...]]]
    ) -> None:
        self._find_storage = find_storage
        self._storage: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._resolved = False

    def _resolve(self) -> Any:
        if not self._resolved:
            self._storage, self._errors = self._find_storage()
            self._resolved = True
        return self._storage

    def current(self) -> object:
        storage = self._resolve()
        if storage is None:
            return None  # no Redis: nothing to read
        try:
            return storage.get(REDIS_KEY)
        except self._errors:
            # Unknown: a fresh object never equals the last value, so the cache is emptied.
            return object()

    def announce(self) -> None:
        storage = self._resolve()
        if storage is None:
            return
        try:
            storage.incr(REDIS_KEY, REDIS_KEY_SECONDS)
        except self._errors as error:
            logger.warning(
                "Could not announce a key change through Redis (%s): processes on other hosts "
                "see it when their cache entries expire",
                type(error).__name__,
            )


class Generations:
    """Several announcements read and written together (the file, and Redis if shared)."""

    def __init__(self, parts: Sequence[Generation]) -> None:
        self.parts = tuple(parts)

    def current(self) -> object:
        return tuple(part.current() for part in self.parts)

    def announce(self) -> None:
        for part in self.parts:
            part.announce()
