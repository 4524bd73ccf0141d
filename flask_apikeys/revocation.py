"""The deny-list of revoked access tokens (RFC 7009), shared by every process of an app.

A token is a signed, self-contained JWT: nothing about it is stored when it is issued, so
revoking one before its ``exp`` means remembering its ``jti`` until then. The entry lives in the
rate-limit storage (Redis in a multi-process deployment, as ``APIKEYS_RATELIMIT_STORAGE_URI`` or
a shared Flask-Limiter says), with an expiry equal to what was left of the token's life, so the
list never holds more than the tokens that could still be used. Without a shared storage (rate
limits off, or the default ``memory://``) the list is kept in the process, which is enough for
one process only: the docs say so.

Every request made with a token checks the list. So that a busy token costs no round trip per
request, a "not revoked" answer is remembered for ``APIKEYS_CACHE_TTL`` seconds, the same bound
a revoked key's snapshot has in other processes; the process that revokes a token forgets it at
once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .boundedcache import BoundedCache
from .errors import BackendUnavailable

logger = logging.getLogger("flask_apikeys")
#: How many answers (and, without a shared storage, revoked ids) are remembered at most.
MAX_REMEMBERED = 10_000
KEY_PREFIX = "apikeys:revoked-token:"


class TokenDenyList:
    """Revoked token ids until their tokens expire.

    :param find_storage: returns the ``limits`` storage to share, or ``None`` for this process
        only; called on first use (the rate limiter resolves its storage lazily too).
    :param errors: what that storage raises when it cannot be reached.
    :param answer_ttl: how long a "not revoked" answer is trusted (``APIKEYS_CACHE_TTL``).
    :param fail_open: whether an unreachable storage lets tokens through (else 503).
    """

    def __init__(
        self,
        find_storage: Callable[[], tuple[Any, tuple[type[BaseException], ...]]],
        *,
        answer_ttl: float,
        fail_open: bool,
    ) -> None:
        self._find_storage = find_storage
        self._storage: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._resolved = False
        self.answer_ttl = answer_ttl
        self.fail_open = fail_open
        self._lock = threading.Lock()
        #: jti → until when (POSIX time) it is revoked, when no storage is shared.
        self._local: dict[str, float] = {}
        #: jti → until when (monotonic) "not revoked" is trusted.
        self._not_revoked: BoundedCache[str, float] = BoundedCache(MAX_REMEMBERED)
        #: Revocations recorded by this process so far: a check that read the list before one
        #: does not remember its "not revoked" (see :meth:`is_revoked`).
        self._revocations = 0

    def _resolve(self) -> Any:
        if not self._resolved:
            with self._lock:
                if not self._resolved:
                    self._storage, self._errors = self._find_storage()
                    self._resolved = True
        return self._storage

    def revoke(self, jti: str, expires_at: float) -> None:
        """Refuse the token ``jti`` from now until ``expires_at`` (its ``exp``)."""
        remaining = math.ceil(expires_at - time.time())
        if remaining <= 0:
            return  # already refused by its exp
        storage = self._resolve()
        if storage is None:
            with self._lock:
                # Live entries are never dropped (that would un-revoke a token): the list is
                # bounded by what authorized callers revoke, at the rate limits allow.
                if len(self._local) >= MAX_REMEMBERED:
                    self._sweep()
                self._local[jti] = time.time() + remaining
        else:
            try:
                storage.incr(KEY_PREFIX + jti, remaining)
            except self._errors as error:
                # The client was told nothing yet: it must not believe the token is gone.
                logger.warning("Could not record a revoked token (%s)", type(error).__name__)
                raise BackendUnavailable(
                    "The token could not be revoked right now; retry shortly."
                ) from None
        # After the write: a check that read the list before it may be about to remember
        # "not revoked"; the count tells it not to, and what it remembered already goes.
        with self._lock:
            self._revocations += 1
            self._not_revoked.pop(jti, None)

    def is_revoked(self, jti: str) -> bool:
        """Whether ``jti`` was revoked (a cached "no" for at most ``answer_ttl`` seconds)."""
        now = time.monotonic()
        trusted_until = self._not_revoked.get(jti)
        if trusted_until is not None and now < trusted_until:
            return False
        storage = self._resolve()
        revocations_before = self._revocations
        if storage is None:
            until = self._local.get(jti)
            revoked = until is not None and time.time() < until
        else:
            try:
                revoked = int(storage.get(KEY_PREFIX + jti) or 0) > 0
            except self._errors as error:
                if not self.fail_open:
                    raise BackendUnavailable(
                        "Access tokens cannot be checked right now; retry shortly."
                    ) from None
                logger.warning(
                    "Revoked-token list unreachable (%s): tokens are let through",
                    type(error).__name__,
                )
                return False
        if not revoked and self.answer_ttl > 0:
            with self._lock:
                if self._revocations == revocations_before:  # else the answer may be stale
                    self._not_revoked.put(jti, now + self.answer_ttl)
        return revoked

    def _sweep(self) -> None:
        now = time.time()
        for jti, until in list(self._local.items()):
            if until <= now:
                del self._local[jti]
