"""Every ``APIKEYS_*`` setting, declared once: its key, default, parser and documentation.

Each field of :class:`Settings` is declared with :func:`option`; the option table
(:data:`OPTIONS`), the validation in :func:`load_settings`, the defaults written to
``app.config``, the log of what came from the environment and the configuration page of the
docs are all read from those declarations.

A value is taken from ``app.config`` first, then from an environment variable of the same name
(JSON for lists and mappings), then from the default. ``init_app`` reads and validates all of
them once, so a bad value stops the app at start with a message naming the key and what it
accepts, instead of failing on some later request.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from . import config_parsers as parse
from .config_parsers import MIN_ADMIN_KEY_LENGTH, Plan, parse_roles
from .hashing import HMAC_SHA256

__all__ = [
    "DEFAULT_PLANS",
    "DEFAULT_PUBLIC_PATHS",
    "MIN_ADMIN_KEY_LENGTH",
    "OPTIONS",
    "ConfigError",
    "Option",
    "Plan",
    "Settings",
    "Weakening",
    "load_settings",
    "parse_roles",
    "taken_from_environment",
    "weakening_messages",
    "write_defaults",
]

DEFAULT_PLANS: dict[str, dict[str, int | None]] = {
    "free": {"requests_per_minute": 10, "monthly_requests": 1_000, "max_keys": 2},
    "pro": {"requests_per_minute": 60, "monthly_requests": 100_000, "max_keys": 10},
    "enterprise": {"requests_per_minute": 300, "monthly_requests": 1_000_000, "max_keys": 50},
}
DEFAULT_PUBLIC_PATHS = ("/health", "/docs", "/openapi.json")


class ConfigError(RuntimeError):
    """A configuration value is wrong; the message names the key and what it accepts."""


@dataclass(frozen=True, slots=True)
class Weakening:
    """Values of an option that make an app less safe than its default, and what they do.

    Coming from the environment, a stray ``export`` in a shell would change that silently:
    ``init_app`` warns about each such value by name.
    """

    applies: Callable[[Any], bool]
    effect: str


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: its default, the parser that checks a value, what it does."""

    name: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    #: Never logged, never copied from the environment into ``app.config``.
    secret: bool = False
    weakening: Weakening | None = None
    #: The :class:`Settings` attribute that holds the parsed value.
    attribute: str = ""


def option(
    name: str,
    default: Any,
    parse: Callable[[Any], Any],
    doc: str,
    *,
    secret: bool = False,
    weakening: Weakening | None = None,
) -> Any:
    """Declare a :class:`Settings` field as the option ``name`` (the field has no default of
    its own: ``default`` is the value as ``app.config`` would hold it, parsed like any other)."""
    declared = Option(name, default, parse, doc, secret, weakening)
    return field(repr=not secret, metadata={"option": declared})


def _is_false(value: Any) -> bool:
    return value is False


def _is_true(value: Any) -> bool:
    return value is True


def _is_off(value: Any) -> bool:
    return value is None


#: Days of a retention setting: up to a century (a date that far back is still representable).
RETENTION_DAYS = parse.number(int, minimum=1, maximum=36_500, what="a whole number of days")


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration of one app, one field per ``APIKEYS_*`` option."""

    enabled: bool = option(
        "APIKEYS_ENABLED",
        True,
        parse.boolean,
        "authenticate requests at all",
        weakening=Weakening(_is_false, "no request is authenticated at all"),
    )
    allow_unauthenticated: bool = option(
        "APIKEYS_ALLOW_UNAUTHENTICATED",
        False,
        parse.boolean,
        "requests with no key pass with current_key None; a bad key is still refused",
        weakening=Weakening(
            _is_true, "requests without a key reach every view that does not demand scopes"
        ),
    )
    public_paths: tuple[str, ...] = option(
        "APIKEYS_PUBLIC_PATHS",
        DEFAULT_PUBLIC_PATHS,
        parse.public_paths,
        "paths that are never authenticated, matched exactly; ``/prefix/*`` matches every "
        "path below ``/prefix/`` (views with @require_scopes are authenticated wherever they "
        "are)",
        weakening=Weakening(
            lambda paths: not set(paths) <= set(DEFAULT_PUBLIC_PATHS),
            "more paths are served without a key",
        ),
    )
    key_prefix: str = option(
        "APIKEYS_KEY_PREFIX", "pk", parse.key_prefix, "first part of every new key"
    )
    default_rate_limit: str = option(
        "APIKEYS_DEFAULT_RATE_LIMIT",
        "60/minute",
        parse.rate_limit,
        "the limit when neither the key, its organization nor its plan sets one",
    )
    plans: dict[str, Plan] = option(
        "APIKEYS_PLANS",
        DEFAULT_PLANS,
        parse.plans,
        "requests per minute, monthly requests and max keys of each plan",
    )
    ratelimit_storage_uri: str | None = option(
        "APIKEYS_RATELIMIT_STORAGE_URI",
        "memory://",
        parse.optional(parse.storage_uri, empty="memory of each process"),
        "where rate-limit counters live: memory:// (each process its own), a Flask-Limiter / "
        "limits storage such as redis://localhost:6379/0, or database (the app's database, "
        "exact across processes without Redis); a scheme limits does not know, or a storage "
        "whose client library is missing (redis for redis://), stops init_app",
    )
    usage_tracking: bool = option(
        "APIKEYS_USAGE_TRACKING", True, parse.boolean, "record every authenticated request"
    )
    #: SHA-256 of ``APIKEYS_ADMIN_KEY``: the key itself is not kept.
    admin_key_digest: bytes | None = option(
        "APIKEYS_ADMIN_KEY",
        None,
        parse.optional(parse.admin_key, empty="no bootstrap key"),
        "a bootstrap key that manages every organization (kept hashed in memory only)",
        secret=True,
    )
    admin_url_prefix: str | None = option(
        "APIKEYS_ADMIN_URL_PREFIX",
        "/admin",
        parse.optional(parse.url_prefix, empty="no admin API"),
        "where the admin blueprint mounts; empty: no admin API",
    )
    hash_secret: tuple[str, ...] = option(
        "APIKEYS_HASH_SECRET",
        None,
        parse.secret_list(16),
        "server-side secret(s) for HMAC-SHA256; the first hashes new keys",
        secret=True,
    )
    hash_schemes: tuple[str, ...] = option(
        "APIKEYS_HASH_SCHEMES",
        None,
        parse.hash_schemes,
        "hash schemes, the first for new keys; keys under the others are rehashed on use "
        "(default: hmac_sha256 and hex_sha256 with a hash secret, else hex_sha256)",
    )
    trusted_proxies: int = option(
        "APIKEYS_TRUSTED_PROXIES",
        0,
        parse.number(int, minimum=0, what="the number of proxies in front of the app"),
        "how many proxies in front of the app set X-Forwarded-For (0: ignore that header)",
    )
    roles: dict[str, tuple[str, ...]] = option(
        "APIKEYS_ROLES",
        {},
        parse.parse_roles,
        "named roles: a mapping of role name to the scopes it grants",
    )
    cache_ttl: float = option(
        "APIKEYS_CACHE_TTL",
        1.0,
        parse.number(float, minimum=0, what="a number of seconds"),
        "seconds a verified key is trusted without asking the database (0 turns it off)",
        weakening=Weakening(
            lambda seconds: seconds > 1.0,
            "a revoked key keeps working for longer on hosts that share no Redis",
        ),
    )
    cache_check_interval: float = option(
        "APIKEYS_CACHE_CHECK_INTERVAL",
        0.5,
        parse.number(float, minimum=0, what="a number of seconds"),
        "seconds between two checks, per process, for key changes announced by the other "
        "processes of the host (or of any host, through Redis), which empty the key cache",
        weakening=Weakening(
            lambda seconds: seconds > 1.0,
            "a revoked key keeps working for longer in other processes",
        ),
    )
    usage_mode: str = option(
        "APIKEYS_USAGE_MODE",
        "buffered",
        parse.choice("buffered", "sync"),
        "buffered: written in batches off the request path; sync: before each response",
    )
    usage_flush_interval: float = option(
        "APIKEYS_USAGE_FLUSH_INTERVAL",
        1.0,
        parse.number(float, minimum=0, what="a number of seconds"),
        "seconds between two writes of buffered usage (what a hard kill can lose at most)",
    )
    usage_batch_size: int = option(
        "APIKEYS_USAGE_BATCH_SIZE",
        500,
        parse.number(int, minimum=1, what="a whole number"),
        "queued rows that trigger a write before the interval ends",
    )
    usage_max_queue: int = option(
        "APIKEYS_USAGE_MAX_QUEUE",
        100_000,
        parse.number(int, minimum=1, what="a whole number"),
        "rows kept queued while the database is unreachable; older ones are dropped past it",
    )
    usage_raw_rows: str = option(
        "APIKEYS_USAGE_RAW_ROWS",
        "all",
        parse.choice("all", "errors", "none"),
        "which requests keep a raw usage row besides the rollups every statistic reads: all, "
        "errors (status 400 and above) or none (see the storage each costs in the usage guide)",
    )
    usage_retention_days: int | None = option(
        "APIKEYS_USAGE_RETENTION_DAYS",
        None,
        parse.optional(RETENTION_DAYS, empty="kept"),
        "days raw usage rows are kept by 'flask apikeys usage prune' (and the writer's pruning)",
    )
    usage_rollup_retention_days: int | None = option(
        "APIKEYS_USAGE_ROLLUP_RETENTION_DAYS",
        None,
        parse.optional(RETENTION_DAYS, empty="kept"),
        "days the hour and day rollups (every statistic) are kept, in whole UTC days",
    )
    usage_prune_in_writer: bool = option(
        "APIKEYS_USAGE_PRUNE_IN_WRITER",
        False,
        parse.boolean,
        "the usage writer applies the two retentions itself, a small batch after a flush at "
        "most once a minute",
    )
    audit: bool = option(
        "APIKEYS_AUDIT",
        True,
        parse.boolean,
        "keep the hash-chained audit trail of key events and refused attempts",
        weakening=Weakening(_is_false, "no audit trail is kept"),
    )
    mask_keys_in_logs: bool = option(
        "APIKEYS_MASK_KEYS_IN_LOGS",
        True,
        parse.boolean,
        "mask anything shaped like a key in every log record of the process",
        weakening=Weakening(_is_false, "keys that reach a log record are not masked"),
    )
    ratelimit_enabled: bool = option(
        "APIKEYS_RATELIMIT_ENABLED",
        True,
        parse.boolean,
        "enforce per-key and per-organization rate limits and monthly quotas",
        weakening=Weakening(_is_false, "no rate limit or quota applies"),
    )
    ratelimit_fail_open: bool = option(
        "APIKEYS_RATELIMIT_FAIL_OPEN",
        True,
        parse.boolean,
        "when the rate-limit storage is unreachable, let authenticated requests through "
        "(true) or answer 503 (false)",
    )
    ratelimit_headers: str = option(
        "APIKEYS_RATELIMIT_HEADERS",
        "x-ratelimit",
        parse.header_families,
        "which rate-limit headers responses carry: x-ratelimit (X-RateLimit-Limit, -Remaining, "
        "-Reset), all (also the IETF draft's RateLimit and RateLimit-Policy), none; true/false "
        "mean x-ratelimit/none",
    )
    ratelimit_lease_seconds: float = option(
        "APIKEYS_RATELIMIT_LEASE_SECONDS",
        0.1,
        parse.number(float, minimum=0, what="a number of seconds"),
        "with a remote storage (Redis), a busy key takes its units a few at a time for at most "
        "this long instead of one round trip per request; limits are never exceeded "
        "(0: one round trip per request)",
    )
    ratelimit_strategy: str = option(
        "APIKEYS_RATELIMIT_STRATEGY",
        "sliding-window",
        parse.choice("sliding-window", "fixed-window"),
        "how rate-limit windows count: sliding-window (the previous window's count, weighted by "
        "how much of it is still within one window, plus the current one's: a burst at a "
        "boundary gets the limit through, not twice it) or fixed-window (a count per window "
        "from its first request); monthly quotas are calendar months either way",
    )
    ratelimit_organization_wide: bool = option(
        "APIKEYS_RATELIMIT_ORGANIZATION_WIDE",
        True,
        parse.boolean,
        "also limit all keys of an organization together to its per-minute limit",
    )
    failed_auth_limit: str | None = option(
        "APIKEYS_FAILED_AUTH_LIMIT",
        "20/minute",
        parse.optional(parse.rate_limit, empty="no limit"),
        "failed authentication attempts allowed per client address (empty: no limit)",
        weakening=Weakening(_is_off, "key guessing is not slowed"),
    )
    admin_rate_limit: str | None = option(
        "APIKEYS_ADMIN_RATE_LIMIT",
        "60/minute",
        parse.optional(parse.rate_limit, empty="no limit"),
        "each admin key's own budget on the admin API, apart from (and not taken from) its "
        "organization's limits and quota (empty: no limit)",
    )
    jwt_enabled: bool = option(
        "APIKEYS_JWT_ENABLED",
        False,
        parse.boolean,
        "issue short-lived JWT access tokens for keys and accept them as Bearer credentials "
        "(needs the jwt extra)",
    )
    jwt_secret: tuple[str, ...] = option(
        "APIKEYS_JWT_SECRET",
        None,
        parse.secret_list(32, why=" (256 bits for HS256)"),
        "HS256 secret(s) of 32+ characters; the first signs unless a private key is set, "
        "all verify",
        secret=True,
    )
    jwt_private_keys: tuple[tuple[str | None, str], ...] = option(
        "APIKEYS_JWT_PRIVATE_KEYS",
        None,
        parse.private_keys,
        "RSA (RS256) or P-256 EC (ES256) private keys in PEM, as a list or a mapping of key id "
        "to PEM; the first signs, all verify and are published at /.well-known/jwks.json",
        secret=True,
    )
    jwt_lifetime: int = option(
        "APIKEYS_JWT_LIFETIME",
        900,
        parse.number(int, minimum=1, maximum=86_400, what="a whole number of seconds"),
        "seconds an access token is valid, at most a day (never past its key's own expiry)",
    )
    jwt_issuer: str = option(
        "APIKEYS_JWT_ISSUER",
        "flask-apikeys",
        parse.text,
        "the iss claim of issued tokens, required on every token received",
    )
    jwt_audience: str = option(
        "APIKEYS_JWT_AUDIENCE",
        "flask-apikeys",
        parse.text,
        "the aud claim of issued tokens, required on every token received",
    )
    jwt_token_path: str = option(
        "APIKEYS_JWT_TOKEN_PATH",
        "/auth/token",
        parse.path,
        "where a key is exchanged for an access token (POST)",
    )
    jwt_check_revocation: bool = option(
        "APIKEYS_JWT_CHECK_REVOCATION",
        True,
        parse.boolean,
        "refuse a token as soon as its key is revoked or expires (within APIKEYS_CACHE_TTL), "
        "not only when the token expires",
        weakening=Weakening(
            _is_false, "access tokens of a revoked key stay valid until they expire"
        ),
    )
    introspection_path: str | None = option(
        "APIKEYS_INTROSPECTION_PATH",
        "/auth/introspect",
        parse.optional(parse.path, empty="not mounted"),
        "where other services ask whether a key or token is active (RFC 7662, POST; empty: "
        "not mounted)",
    )
    introspection_scope: str = option(
        "APIKEYS_INTROSPECTION_SCOPE",
        "apikeys:introspect",
        parse.scope,
        "the scope a key needs to call the introspection endpoint (for its own organization)",
    )
    revocation_path: str | None = option(
        "APIKEYS_REVOCATION_PATH",
        "/auth/revoke",
        parse.optional(parse.path, empty="not mounted"),
        "where a key, or an access token, is revoked by its holder or an admin (RFC 7009, "
        "POST; empty: not mounted)",
    )
    # -- observability (docs/observability.rst) --
    cost_table: dict[str, dict[str, float]] = option(
        "APIKEYS_COST_TABLE",
        {},
        parse.cost_table,
        "prices in USD by URL rule, endpoint or ``*``: ``request`` and/or ``per_1k_tokens``; "
        "every authenticated request below 400 is priced into its usage row",
    )
    metrics_path: str | None = option(
        "APIKEYS_METRICS_PATH",
        "/apikeys/metrics",
        parse.optional(parse.path, empty="not mounted"),
        "where APIKeysMetrics serves the Prometheus metrics (empty: not mounted)",
    )
    metrics_scope: str = option(
        "APIKEYS_METRICS_SCOPE",
        "apikeys:metrics",
        parse.scope,
        "the scope a key must be given by name (not through '*' or a level) to read the metrics",
    )
    metrics_key_id_label: bool = option(
        "APIKEYS_METRICS_KEY_ID_LABEL",
        False,
        parse.boolean,
        "add the key id as a label of apikeys_requests_total (one series per key)",
    )
    # -- dashboard (docs/dashboard.rst) --
    dashboard_url_prefix: str | None = option(
        "APIKEYS_DASHBOARD_URL_PREFIX",
        None,
        parse.optional(parse.url_prefix, empty="no dashboard"),
        "where the browser dashboard mounts, e.g. /dashboard; unset or empty: no dashboard",
    )
    dashboard_session_lifetime: int = option(
        "APIKEYS_DASHBOARD_SESSION_LIFETIME",
        3600,
        parse.number(int, minimum=60, maximum=86_400, what="a whole number of seconds"),
        "seconds a dashboard sign-in lasts (60 to 86400); the session also ends as soon as "
        "its admin key is revoked or expires",
    )


#: Every option, in the order of :class:`Settings` (and of the configuration page).
OPTIONS: tuple[Option, ...] = tuple(
    dataclasses.replace(declared.metadata["option"], attribute=declared.name)
    for declared in dataclasses.fields(Settings)
)


def taken_from_environment(
    app_config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Names of the options read from the environment (``app.config`` does not set them)."""
    environ = os.environ if environ is None else environ
    return [
        option.name
        for option in OPTIONS
        if option.name not in app_config and option.name in environ
    ]


def weakening_messages(settings: Settings, names: list[str]) -> list[str]:
    """For each of ``names`` whose value makes the app less safe: a message saying how."""
    return [
        f"{option.name} from the environment: {option.weakening.effect}"
        for option in OPTIONS
        if option.name in names
        and option.weakening is not None
        and option.weakening.applies(getattr(settings, option.attribute))
    ]


def write_defaults(
    app_config: MutableMapping[str, Any], environ: Mapping[str, str] | None = None
) -> None:
    """Fill ``app.config`` with every option it lacks, as flask-sqlalchemy does: the value
    from the environment (secrets excepted: they stay out of ``app.config``), else the
    default."""
    environ = os.environ if environ is None else environ
    for option in OPTIONS:
        if option.name in app_config:
            continue
        if option.name in environ:
            if not option.secret:
                app_config[option.name] = environ[option.name]
        else:
            app_config[option.name] = copy.deepcopy(option.default)


def read_option(option: Option, app_config: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """Read one option: app.config, then the environment, then the default."""
    if option.name in app_config:
        value = app_config[option.name]
    elif option.name in environ:
        value = environ[option.name]
    else:
        return option.parse(option.default)
    try:
        return option.parse(value)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{option.name} is invalid: {error}") from None


def load_settings(
    app_config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate every option; raise :class:`ConfigError` naming the first bad one."""
    environ = os.environ if environ is None else environ
    values = {option.attribute: read_option(option, app_config, environ) for option in OPTIONS}
    if values["hash_schemes"] is None:
        values["hash_schemes"] = (
            (HMAC_SHA256, "hex_sha256") if values["hash_secret"] else ("hex_sha256",)
        )
    elif HMAC_SHA256 in values["hash_schemes"] and not values["hash_secret"]:
        raise ConfigError(
            "APIKEYS_HASH_SCHEMES names hmac_sha256 but APIKEYS_HASH_SECRET is not set: set a "
            "secret of 16+ characters, or drop hmac_sha256 from the schemes"
        )
    if values["jwt_enabled"] and not (values["jwt_secret"] or values["jwt_private_keys"]):
        raise ConfigError(
            "APIKEYS_JWT_ENABLED is on but nothing can sign tokens: set APIKEYS_JWT_SECRET "
            "(HS256, 32+ characters) or APIKEYS_JWT_PRIVATE_KEYS (RS256/ES256 PEM)"
        )
    return Settings(**values)
