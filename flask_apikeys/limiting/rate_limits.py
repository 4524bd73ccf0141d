"""Rate limits per key and per organization, monthly quotas, and slow key guessing.

Enforced in our own ``before_request`` hook, right after authentication, with the ``limits``
library directly: Flask-Limiter re-resolves its rules on every request, which costs more than
the counters themselves. Every authenticated request takes one unit from, in this order:

1. the organization's monthly quota (``monthly_request_limit``; none if unset), a counter per
   calendar month in UTC, ``quota:{<org id>}:<YYYY-MM>``;
2. the organization-wide limit shared by all its keys (its ``rate_limit_per_minute``);
3. the key's own limit: its custom rate limit, else the organization's per-minute limit, else
   ``APIKEYS_DEFAULT_RATE_LIMIT``.

All of them or none (:mod:`flask_apikeys.limiting.counters`), so a refused request consumes
nothing. Keys are resolved from the cached key snapshot, so a change reaches this process at once
and other processes within ``APIKEYS_CACHE_TTL``. Flask-Limiter users get :func:`key_func` and
:func:`limit_for_key` on top.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from flask import Request, current_app
from limits.storage import Storage, storage_from_string

from .. import signals
from ..boundedcache import BoundedCache
from ..cache import MAX_CACHE_BYTES, approximate_size
from ..environ import RAISED_ENVIRON_KEY, RESULT_ENVIRON_KEY
from ..errors import (
    BackendUnavailable,
    LimitExceeded,
    QuotaExceeded,
    RateLimitExceeded,
)
from ..forking import after_fork_in_child
from ..network import client_address, counted_address
from . import windows
from .counters import Counter, Counters, Outcome, counters_for, is_remote
from .database import DATABASE_URI, DatabaseCounters
from .headers import flask_limiter_writes_headers, registered_limiter
from .leases import LeasedCounters
from .policies import KeyLimits, Month, build_limits, key_limit, parse_limit, per_minute
from .processes import serves_several_processes, warn_per_process
from .templates import KEY_PLACEHOLDER, LimitsTemplate
from .windows import SLIDING_KEY_SUFFIX, SLIDING_WINDOW

if TYPE_CHECKING:
    from ..config import Settings
    from ..identity import VerifiedKey

logger = logging.getLogger("flask_apikeys")
STORAGE_WARNING_INTERVAL = 10.0
#: Whose limit a policy is, in the words of a 429's detail (every other policy is the key's).
POLICY_OWNERS = {
    "organization": "organization's",
    "address": "address's",
    "admin": "admin API",
}
#: How many key configurations (and snapshots, and blocked addresses) are remembered at most.
MAX_REMEMBERED = 10_000
#: How many distinct 429s are remembered at most (a refused key has one per second to wait).
MAX_REMEMBERED_REFUSALS = 1024


#: What one request took, for the response headers: ``(KeyLimits, Outcome, Month)``. A plain
#: tuple: it is built on every request, and a named tuple's constructor is a Python call.
Result = tuple[KeyLimits, Outcome, Month]


class RateLimits:
    """The rate limiting of one app, kept as ``ExtensionState.limits``."""

    def __init__(self, settings: Settings, limiter: Any = None, database: Any = None) -> None:
        self.settings = settings
        self.limiter = limiter
        #: The app's Flask-SQLAlchemy, for ``APIKEYS_RATELIMIT_STORAGE_URI = "database"``.
        self.database = database
        self._counters: Counters | None = None
        #: The same, once a request has shown whether the server runs several processes.
        self._request_counters: Counters | None = None
        self._owns_storage = False
        self._lock = threading.Lock()
        #: Key configurations' limits with the key left out (:mod:`~.templates`).
        self._templates: BoundedCache[tuple[Any, ...], LimitsTemplate] = BoundedCache(
            MAX_REMEMBERED
        )
        # Bounded by memory as well: the entries keep snapshots alive (narrowed token ones
        # too) that the caches of snapshots have already let go of.
        self._by_snapshot: BoundedCache[int, tuple[VerifiedKey, Month, KeyLimits]] = BoundedCache(
            MAX_REMEMBERED, MAX_CACHE_BYTES
        )
        self._month = Month.containing(windows.now())
        self._failed_auth = parse_limit(settings.failed_auth_limit or "1/second")
        #: client address → its failed-attempt counters (a client retrying a wrong key).
        self._failure_counters: BoundedCache[str, tuple[Counter, ...]] = BoundedCache(
            MAX_REMEMBERED
        )
        #: Windows slide (``APIKEYS_RATELIMIT_STRATEGY``); the monthly quota never does.
        self._sliding = settings.ratelimit_strategy == SLIDING_WINDOW
        #: (limits id, refusing counter, seconds to wait) → (the limits, their 429).
        self._refusals: BoundedCache[tuple[int, int, int], tuple[KeyLimits, LimitExceeded]] = (
            BoundedCache(MAX_REMEMBERED_REFUSALS)
        )
        #: client address → until when it is refused without verifying its key.
        self.blocked: dict[str, float] = {}
        self._last_warning = 0.0
        self._headers_checked = False
        after_fork_in_child(self, RateLimits._after_fork)

    def _after_fork(self) -> None:
        """In a forked worker: counters in this process's memory do not hold across workers."""
        if self._counters is not None and not is_remote(self._counters):
            warn_per_process()

    # -- storage ------------------------------------------------------------------------------

    @property
    def counters(self) -> Counters:
        """Counters over the app's Flask-Limiter storage, or ``APIKEYS_RATELIMIT_STORAGE_URI``.

        Resolved on first use, so a ``Limiter`` initialised after us is still found.
        """
        if self._counters is None:
            with self._lock:
                if self._counters is None:
                    counters = self._database_counters() or counters_for(self._find_storage())
                    lease_seconds = self.settings.ratelimit_lease_seconds
                    if lease_seconds > 0 and is_remote(counters):
                        counters = LeasedCounters(counters, lease_seconds)
                    self._counters = counters
        return self._counters

    def _first_request_counters(self) -> Counters:
        """:attr:`counters`, warning if they are in this process's memory while the WSGI
        server runs several processes (its first request is the first time we can tell)."""
        counters = self.counters
        if not is_remote(counters) and serves_several_processes():
            warn_per_process()
        self._request_counters = counters
        return counters

    def _database_counters(self) -> Counters | None:
        """Counters in the app's database, if ``APIKEYS_RATELIMIT_STORAGE_URI`` asks for them
        (before a shared Flask-Limiter's storage, which cannot be a database)."""
        uri = (self.settings.ratelimit_storage_uri or "").rstrip(":/")
        if uri != DATABASE_URI:
            return None
        if self.database is None:
            raise RuntimeError(
                'APIKEYS_RATELIMIT_STORAGE_URI = "database" needs the app\'s Flask-SQLAlchemy: '
                "pass db= to APIKeys or init_app."
            )
        database = self.database
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def engine() -> Any:
            with app.app_context():
                return database.engine

        return DatabaseCounters(engine)

    def _find_storage(self) -> Storage | None:
        """The shared Limiter's storage, else one from the URI (``None``: our own memory)."""
        limiter = self.limiter
        if limiter is None:
            registered = current_app.extensions.get("limiter") or ()
            limiter = next(iter(registered), None)
        if limiter is not None:
            self.check_header_settings(current_app.config, limiter)
            return cast(Storage, limiter.storage)
        self._owns_storage = True
        uri = self.settings.ratelimit_storage_uri or "memory://"
        if uri.startswith("memory://"):
            return None
        return cast(Storage, storage_from_string(uri))

    def close(self) -> None:
        """Close the connections of a storage we opened (not of a shared ``Limiter``'s)."""
        counters, self._counters = self._counters, None
        self._request_counters = None
        if counters is not None:
            counters.close()
        storage = counters and counters.storage
        if not self._owns_storage or storage is None:
            return
        # The client, and with Sentinel the replica client and the sentinels' own clients.
        sentinel = getattr(storage, "sentinel", None)
        clients = [getattr(storage, "storage", None), getattr(storage, "storage_slave", None)]
        for client in [*clients, *getattr(sentinel, "sentinels", ())]:
            if client is not None and hasattr(client, "close"):
                client.close()
            # redis-py before 5.0.1 closes only the client's own connection, not its pool's
            # (nor, for a cluster, its nodes' pools).
            nodes = client.get_nodes() if hasattr(client, "get_nodes") else ()
            node_clients = [getattr(node, "redis_connection", None) for node in nodes]
            for owner in [client, *node_clients]:
                pool = getattr(owner, "connection_pool", None)
                if pool is not None and hasattr(pool, "disconnect"):
                    pool.disconnect()

    def _take(self, counters: tuple[Counter, ...]) -> Outcome | None:
        """Take from every counter; ``None`` when the storage is down and we fail open."""
        store = self.counters
        try:
            return store.take(counters)
        except store.errors as error:
            self._storage_failed(error)
            return None

    def _storage_failed(self, error: BaseException) -> None:
        """Warn (at most every ``STORAGE_WARNING_INTERVAL`` s); fail open, or raise 503."""
        now = time.monotonic()
        if now - self._last_warning >= STORAGE_WARNING_INTERVAL:
            self._last_warning = now
            logger.warning(
                "Rate-limit storage unreachable (%s): %s",
                type(error).__name__,
                "requests are let through"
                if self.settings.ratelimit_fail_open
                else "requests are refused with 503",
            )
        if self.settings.ratelimit_fail_open:
            return None
        raise BackendUnavailable(
            "Rate limits cannot be checked right now; retry shortly."
        ) from None

    # -- the request hook ---------------------------------------------------------------------

    def enforce_admin(self, key: VerifiedKey, current_request: Request) -> None:
        """Take one unit of the key's admin API budget (``APIKEYS_ADMIN_RATE_LIMIT``).

        Its own counters: admin calls neither take from nor wait for the organization's
        per-minute limit and quota, so a leaked key burning those cannot stop the organization
        from revoking it.
        """
        admin_limit = self.settings.admin_rate_limit
        if not admin_limit:
            return
        tag = f"{{{key.organization.id}}}"
        policies = [
            ("admin", f"apikeys:{tag}:admin:{key.id}:{window}", amount, window)
            for amount, window in parse_limit(admin_limit)
        ]
        month = self._month
        limits = build_limits(policies, None, month, sliding=self._sliding)
        outcome = self._take(limits.counters)
        if outcome is None:
            return
        current_request.environ[RESULT_ENVIRON_KEY] = (limits, outcome, month)
        if outcome.refused is not None:
            raise self._refusal(
                limits, outcome, month, windows.now(), current_request.environ
            ).copy()

    def enforce(self, key: VerifiedKey, current_request: Request) -> None:
        """Take one unit of every limit of ``key``, or raise 429 and take none."""
        refusal = self.check(key, current_request)
        if refusal is not None:
            raise refusal.copy()

    def check(self, key: VerifiedKey, current_request: Request) -> LimitExceeded | None:
        """Take one unit of every limit of ``key``, or take none and return the 429.

        Returned, not raised: the request hook answers it directly (a refused client must
        not cost more than a served one, and raising through the pipeline's frames does).
        """
        now = windows.now()
        month = self._month
        if now >= month.end:
            month = self._month = Month.containing(now)
        entry = self._by_snapshot.get(id(key))
        if entry is not None and entry[0] is key and entry[1] is month:
            limits = entry[2]
        else:
            limits = self._resolve(key, month)
        store = self._request_counters or self._first_request_counters()
        try:
            outcome = store.take(limits.counters)
        except store.errors as error:
            self._storage_failed(error)
            return None
        current_request.environ[RESULT_ENVIRON_KEY] = (limits, outcome, month)
        if outcome.refused is not None:
            return self._refusal(limits, outcome, month, now, current_request.environ)
        return None

    def counters_of(self, key: VerifiedKey) -> dict[str, Counter]:
        """The counters a request with ``key`` takes this month, by policy name: ``quota``,
        ``organization``, ``apikey`` (or ``apikey-<window>s`` for several windows).

        For operators and tests that look at a counter without knowing how it is stored.
        """
        limits = self._key_limits_for(key, Month.containing(windows.now()))
        return dict(zip(limits.names, limits.counters, strict=True))

    def _resolve(self, key: VerifiedKey, month: Month) -> KeyLimits:
        """The limits of a key snapshot not seen yet, from its configuration's template: a
        key reloaded from the database each second, or a cold key, names its own counters and
        shares everything else with the keys of the same configuration."""
        limits = self._key_limits_for(key, month)
        # A snapshot is not hashable (its metadata is a dict), so it is found by identity: it
        # is kept in the entry, so its id() cannot be reused while the entry is there.
        self._by_snapshot.put(id(key), (key, month, limits), approximate_size(key))
        return limits

    def _key_limits_for(self, key: VerifiedKey, month: Month) -> KeyLimits:
        organization = key.organization
        configuration = (
            key.custom_rate_limit,
            organization.id.int,
            organization.rate_limit_per_minute,
            organization.monthly_request_limit,
            month.label,
        )
        template = self._templates.get(configuration)
        if template is None:
            template = self._templates.put(
                configuration, LimitsTemplate.of(self._template_limits(key, month))
            )
        return template.for_key(str(key.id))

    def _template_limits(self, key: VerifiedKey, month: Month) -> KeyLimits:
        """The limits of ``key``'s configuration, with :data:`~.templates.KEY_PLACEHOLDER`
        for its id."""
        organization = key.organization
        tag = f"{{{organization.id}}}"  # one Redis Cluster slot for all of an org's counters
        default = self.settings.default_rate_limit
        policies = []
        if self.settings.ratelimit_organization_wide:
            for amount, window in parse_limit(
                per_minute(organization.rate_limit_per_minute, default)
            ):
                policies.append(("organization", f"apikeys:{tag}:org:{window}", amount, window))
        own = parse_limit(key_limit(key, default))
        for amount, window in own:
            name = "apikey" if len(own) == 1 else f"apikey-{window}s"
            policies.append((name, f"apikeys:{tag}:key:{KEY_PLACEHOLDER}:{window}", amount, window))
        monthly = organization.monthly_request_limit
        quota = None if monthly is None else (f"quota:{tag}:{month.label}", monthly)
        return build_limits(policies, quota, month, sliding=self._sliding)

    def enforce_anonymous(self, current_request: Request) -> None:
        """Take one unit of the client address's limit (``APIKEYS_ALLOW_UNAUTHENTICATED``)."""
        refusal = self.check_anonymous(current_request)
        if refusal is not None:
            raise refusal.copy()

    def check_anonymous(self, current_request: Request) -> LimitExceeded | None:
        """:meth:`enforce_anonymous`, returning its 429 rather than raising it (:meth:`check`)."""
        address = counted_address(
            client_address(current_request.environ, self.settings.trusted_proxies)
        )
        tag = f"{{{address}}}"  # one Redis Cluster slot for all windows of an address
        policies = [
            ("address", f"apikeys:address:{tag}:{window}", amount, window)
            for amount, window in parse_limit(self.settings.default_rate_limit)
        ]
        limits = build_limits(policies, None, self._month, sliding=self._sliding)
        outcome = self._take(limits.counters)
        if outcome is None:
            return None
        current_request.environ[RESULT_ENVIRON_KEY] = (limits, outcome, self._month)
        if outcome.refused is not None:
            month = self._month
            return self._refusal(limits, outcome, month, windows.now(), current_request.environ)
        return None

    def _refusal(
        self,
        limits: KeyLimits,
        outcome: Outcome,
        month: Month,
        now: float,
        environ: dict[str, Any],
    ) -> LimitExceeded:
        """The 429 for the counter that refused, signalled; built once per distinct refusal
        (limits, counter, seconds to wait): a client hammering past its limit gets the same
        one many times a second, and building an error costs more than serving a request.

        The error is shared: whoever raises it raises :meth:`~LimitExceeded.copy` of it.
        """
        index = cast(int, outcome.refused)
        if index == limits.quota_index:
            retry_after = math.ceil(month.end - now)
        else:
            retry_after = math.ceil(outcome.resets[index] - now)
        identity = (id(limits), index, retry_after)
        # The entry keeps its limits alive, so their id() cannot be reused while it is there.
        remembered = self._refusals.get(identity)
        if remembered is not None and remembered[0] is limits:
            error = remembered[1]
            environ[RAISED_ENVIRON_KEY] = error
        else:
            error = self._refusals.put(
                identity, (limits, build_refusal(limits, index, retry_after, month))
            )[1]
        return signals.send_limit_refusal(error)

    # -- failed authentication ----------------------------------------------------------------

    def refuse_if_blocked(self, address: str) -> None:
        """Raise 429 while ``address`` (an IPv6 one's /64) is blocked for failed attempts."""
        address = counted_address(address)
        until = self.blocked.get(address)
        if until is None:
            return
        now = windows.now()
        if now >= until:
            self.blocked.pop(address, None)
            return
        raise signals.send_limit_refusal(
            RateLimitExceeded(
                "Too many failed authentication attempts from this address; retry later.",
                retry_after=math.ceil(until - now),
                policy="failed-authentication",
            )
        )

    def count_failure(self, address: str) -> None:
        """Count a failed attempt; past the limit, answer 429 and refuse the address for a while.

        Each process remembers refused addresses itself, so an address gets at most one more
        verified attempt per process and window than the limit. An IPv6 address counts as its
        /64 (:func:`~flask_apikeys.network.counted_address`).
        """
        address = counted_address(address)
        counters = self._failure_counters.get(address)
        if counters is None:
            tag = f"{{{address}}}"  # one Redis Cluster slot for all windows of an address
            suffix = SLIDING_KEY_SUFFIX if self._sliding else ""
            counters = self._failure_counters.put(
                address,
                tuple(
                    Counter(
                        f"apikeys:failed-auth:{tag}:{window}{suffix}", amount, window, self._sliding
                    )
                    for amount, window in self._failed_auth
                ),
            )
        outcome = self._take(counters)
        if outcome is None or outcome.refused is None:
            return
        if len(self.blocked) >= MAX_REMEMBERED:
            self.blocked.clear()
        self.blocked[address] = max(outcome.resets)
        self.refuse_if_blocked(address)

    # -- Flask-Limiter ------------------------------------------------------------------------

    def flask_limiter(self) -> Any:
        """The Flask-Limiter ``Limiter`` we share storage with, if any."""
        if self.limiter is not None:
            return self.limiter
        return registered_limiter()

    def check_header_settings(self, app_config: Any, limiter: Any = None) -> None:
        """Warn once when Flask-Limiter and we would both write ``X-RateLimit-*``."""
        limiter = limiter or self.limiter
        if self._headers_checked or limiter is None:
            return
        self._headers_checked = True
        if self.settings.ratelimit_headers == "none":
            return
        if flask_limiter_writes_headers(limiter, app_config):
            logger.warning(
                "Flask-Limiter's RATELIMIT_HEADERS_ENABLED and flask-apikeys' "
                "APIKEYS_RATELIMIT_HEADERS both write X-RateLimit-* headers, so responses would "
                "carry them twice: set RATELIMIT_HEADERS_ENABLED = False (flask-apikeys then "
                "writes them, and Retry-After, for Flask-Limiter's refusals too), or "
                'APIKEYS_RATELIMIT_HEADERS = "none".'
            )


def build_refusal(limits: KeyLimits, index: int, retry_after: int, month: Month) -> LimitExceeded:
    """The 429 of ``limits``' counter ``index``, retried in ``retry_after`` seconds."""
    counter = limits.counters[index]
    if index == limits.quota_index:
        return QuotaExceeded(
            f"The organization's monthly quota of {counter.limit} requests is used up; it "
            "renews on the first day of next month (UTC).",
            retry_after=retry_after,
            limit=counter.limit,
            period=month.label,
        )
    whose = POLICY_OWNERS.get(limits.names[index], "key's")
    return RateLimitExceeded(
        f"The {whose} rate limit of {counter.limit} requests per {counter.window_seconds} s "
        f"is reached; retry in {max(1, retry_after)} s.",
        retry_after=retry_after,
        policy=limits.names[index],
        limit=counter.limit,
        window_seconds=counter.window_seconds,
    )
