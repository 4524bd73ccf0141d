"""Every ``APIKEYS_*`` setting in one place: its default, how it is parsed, how it is checked.

A value is taken from ``app.config`` first, then from an environment variable of the same name
(JSON for lists and mappings), then from the default. ``init_app`` reads and validates all of
them once, so a bad value stops the app at start with a message naming the key and what it
accepts, instead of failing on some later request.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from limits import parse_many

from .hashing import HMAC_SHA256, SUPPORTED_SCHEMES, admin_key_digest
from .keys import PREFIX_PATTERN
from .scopes import normalize_scopes

#: The bootstrap admin key manages every organization: it must not be guessable.
MIN_ADMIN_KEY_LENGTH = 32

ROLE_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_\-]{0,49}")


@dataclass(frozen=True, slots=True)
class Plan:
    """What an organization on a plan may do; ``None`` means unlimited."""

    name: str
    requests_per_minute: int | None
    monthly_requests: int | None
    max_keys: int | None
    #: The scopes keys of this plan may be given at most; ``None`` means any.
    scopes: tuple[str, ...] | None = None


DEFAULT_PLANS: dict[str, dict[str, int | None]] = {
    "free": {"requests_per_minute": 10, "monthly_requests": 1_000, "max_keys": 2},
    "pro": {"requests_per_minute": 60, "monthly_requests": 100_000, "max_keys": 10},
    "enterprise": {"requests_per_minute": 300, "monthly_requests": 1_000_000, "max_keys": 50},
}
DEFAULT_PUBLIC_PATHS = ("/health", "/docs", "/openapi.json")


COST_PRICE_FIELDS = frozenset({"request", "per_1k_tokens"})


class ConfigError(RuntimeError):
    """A configuration value is wrong; the message names the key and what it accepts."""


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false (or 1/0, yes/no, on/off)")


def _parse_json_if_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"expected JSON ({error.msg})") from None
    return value


def _parse_string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and not value.lstrip().startswith("["):
        value = [part.strip() for part in value.split(",") if part.strip()]
    value = _parse_json_if_text(value)
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of strings (JSON or comma-separated)")
    return tuple(value)


def _parse_paths(value: Any) -> tuple[str, ...]:
    paths = _parse_string_list(value)
    if not all(path.startswith("/") for path in paths):
        raise ValueError("expected paths that start with '/'")
    for path in paths:
        if "*" in path and not (path.endswith("/*") and path.count("*") == 1 and path != "/*"):
            raise ValueError(
                f"{path!r}: '*' is only accepted as the last part of a prefix such as /static/*"
            )
    return paths


def _parse_optional_string(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _parse_admin_key(value: Any) -> bytes | None:
    """Keep only the SHA-256 of the bootstrap admin key (see :func:`hashing.admin_key_digest`)."""
    key = _parse_optional_string(value)
    if key is None:
        return None
    if len(key) < MIN_ADMIN_KEY_LENGTH or key != key.strip():
        raise ValueError(
            f"expected at least {MIN_ADMIN_KEY_LENGTH} characters without surrounding spaces, "
            "e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return admin_key_digest(key)


def _parse_url_prefix(value: Any) -> str | None:
    prefix = _parse_optional_string(value)
    if prefix is None:
        return None
    if not prefix.startswith("/") or prefix == "/" or "<" in prefix:
        raise ValueError("expected a path such as /admin, or an empty value to not mount it")
    return prefix.rstrip("/")


def _parse_key_prefix(value: Any) -> str:
    if not isinstance(value, str) or not PREFIX_PATTERN.fullmatch(value):
        raise ValueError("expected 1-16 lowercase letters or digits, starting with a letter")
    return value


BARE_NUMBER = re.compile(r"[0-9]+")


def _parse_rate_limit(value: Any) -> str:
    """A ``limits`` string; a bare number (``60``, as the design documents write it) is per
    minute."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and BARE_NUMBER.fullmatch(value.strip()):
        value = f"{int(value)}/minute"
    if not isinstance(value, str):
        raise ValueError("expected a rate-limit string such as '60/minute'")
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate limit such as '60/minute' or '1000/day'"
        ) from None
    return value


def _parse_optional_rate_limit(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _parse_rate_limit(value)


def _parse_positive_number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds, 0 or more") from None
    if number < 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return number


def _parse_proxy_count(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected the number of proxies in front of the app, 0 or more") from None
    if number < 0 or isinstance(value, bool):
        raise ValueError("expected the number of proxies in front of the app, 0 or more")
    return number


def _parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return str(value)

    return parse


HEADER_FAMILIES = ("x-ratelimit", "all", "none")


def _parse_header_families(value: Any) -> str:
    """``APIKEYS_RATELIMIT_HEADERS``: one of :data:`HEADER_FAMILIES`, or a boolean."""
    if isinstance(value, str) and value.strip().lower() in HEADER_FAMILIES:
        return value.strip().lower()
    try:
        return "x-ratelimit" if _parse_bool(value) else "none"
    except ValueError:
        raise ValueError(f"expected one of: {', '.join(HEADER_FAMILIES)} (or true/false)") from None


def _parse_count(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected a whole number, 1 or more") from None
    if number < 1 or isinstance(value, bool):
        raise ValueError("expected a whole number, 1 or more")
    return number


def _parse_plans(value: Any) -> dict[str, Plan]:
    value = _parse_json_if_text(value)
    if not isinstance(value, Mapping) or not value:
        raise ValueError("expected a mapping of plan name to its limits")
    plans = {}
    fields = ("requests_per_minute", "monthly_requests", "max_keys")
    for name, limits in value.items():
        if not isinstance(limits, Mapping) or not set(fields) <= set(limits) <= {*fields, "scopes"}:
            raise ValueError(
                f"plan {name!r} must give exactly {', '.join(fields)} (and optionally scopes)"
            )
        for field_name in fields:
            number = limits[field_name]
            if number is not None and (not isinstance(number, int) or number < 0):
                raise ValueError(f"plan {name!r}: {field_name} must be a whole number or null")
        scopes = limits.get("scopes")
        if scopes is not None:
            scopes = tuple(normalize_scopes(_parse_string_list(scopes)))
        plans[str(name)] = Plan(name=str(name), **{f: limits[f] for f in fields}, scopes=scopes)
    return plans


def parse_roles(value: Any) -> dict[str, tuple[str, ...]]:
    value = _parse_json_if_text(value)
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of role name to a list of scopes")
    roles = {}
    for name, scopes in value.items():
        if not isinstance(name, str) or not ROLE_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"role name {name!r} must be lowercase letters, digits, '-' or '_'")
        roles[name] = tuple(normalize_scopes(_parse_string_list(scopes)))
    return roles


def _parse_hash_secrets(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str) and not value.lstrip().startswith("["):
        value = [value]
    secrets_list = _parse_string_list(value)
    if any(len(secret) < 16 for secret in secrets_list):
        raise ValueError("each secret must be at least 16 characters")
    return secrets_list


def _parse_hash_schemes(value: Any) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    schemes = _parse_string_list(value)
    unknown = [scheme for scheme in schemes if scheme not in SUPPORTED_SCHEMES]
    if not schemes or unknown:
        raise ValueError(
            f"unknown scheme(s) {unknown}; accepted: {', '.join(SUPPORTED_SCHEMES)} (salted "
            "password hashes such as bcrypt cannot be looked up through an index)"
        )
    return schemes


def _parse_jwt_secrets(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str) and not value.lstrip().startswith("["):
        value = [value]
    secrets_list = _parse_string_list(value)
    if any(len(secret) < 32 for secret in secrets_list):
        raise ValueError("each secret must be at least 32 characters (256 bits for HS256)")
    return secrets_list


def _parse_private_keys(value: Any) -> tuple[tuple[str | None, str], ...]:
    """PEMs as a list (key ids derived from the keys) or a mapping of key id to PEM."""
    if value is None or value == "":
        return ()
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        value = [value]
    value = _parse_json_if_text(value)
    if isinstance(value, Mapping):
        entries = [(kid, pem) for kid, pem in value.items()]
    elif isinstance(value, list | tuple):
        entries = [(None, pem) for pem in value]
    else:
        raise ValueError("expected a PEM, a list of PEMs, or a mapping of key id to PEM")
    for position, (kid, pem) in enumerate(entries, 1):
        if kid is not None and (not isinstance(kid, str) or not kid.strip()):
            raise ValueError(f"key id {kid!r} must be a non-empty string")
        if not isinstance(pem, str) or "PRIVATE KEY-----" not in pem:
            raise ValueError(f"entry {kid or position} is not a PEM private key")
    return tuple(entries)


def _parse_lifetime(value: Any) -> int:
    message = "expected a whole number of seconds from 1 to 86400 (one day)"
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not 1 <= number <= 86_400 or isinstance(value, bool):
        raise ValueError(message)
    return number


def _parse_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def _parse_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("expected a path that starts with '/'")
    return value


def _parse_optional_path(value: Any) -> str | None:
    path = _parse_optional_string(value)
    if path is None:
        return None
    if not path.startswith("/") or "<" in path:
        raise ValueError("expected a path that starts with '/', or an empty value to not mount it")
    return path


def parse_cost_table(table: Any) -> dict[str, dict[str, float]]:
    """``APIKEYS_COST_TABLE`` with its prices as floats; ``ValueError`` naming a wrong entry."""
    if not isinstance(table, Mapping):
        raise ValueError(
            "expected a mapping of URL rule, endpoint or '*' to prices, e.g. "
            '{"/v1/generate": {"request": 0.002, "per_1k_tokens": 0.01}}'
        )
    checked: dict[str, dict[str, float]] = {}
    for entry, prices in table.items():
        if not isinstance(prices, Mapping) or not prices or set(prices) - COST_PRICE_FIELDS:
            raise ValueError(
                f"{entry!r} must map 'request' and/or 'per_1k_tokens' to a price in USD"
            )
        checked[str(entry)] = {}
        for name, price in prices.items():
            if isinstance(price, bool) or not isinstance(price, int | float) or not price >= 0:
                raise ValueError(f"{entry!r}: {name!r} must be a number >= 0, not {price!r}")
            checked[str(entry)][name] = float(price)
    return checked


def _parse_scope(value: Any) -> str:
    scopes = normalize_scopes([value] if isinstance(value, str) else value)
    if len(scopes) != 1:
        raise ValueError("expected one scope such as 'apikeys:introspect'")
    return scopes[0]


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: its default and the function that parses and checks a value."""

    name: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str


OPTIONS: tuple[Option, ...] = (
    Option("APIKEYS_ENABLED", True, _parse_bool, "authenticate requests at all"),
    Option(
        "APIKEYS_ALLOW_UNAUTHENTICATED",
        False,
        _parse_bool,
        "requests with no key pass with current_key None; a bad key is still refused",
    ),
    Option(
        "APIKEYS_PUBLIC_PATHS",
        DEFAULT_PUBLIC_PATHS,
        _parse_paths,
        "paths that are never authenticated, matched exactly; ``/prefix/*`` matches every "
        "path below ``/prefix/`` (views with @require_scopes are authenticated wherever they "
        "are)",
    ),
    Option("APIKEYS_KEY_PREFIX", "pk", _parse_key_prefix, "first part of every new key"),
    Option(
        "APIKEYS_DEFAULT_RATE_LIMIT",
        "60/minute",
        _parse_rate_limit,
        "the limit when neither the key, its organization nor its plan sets one",
    ),
    Option(
        "APIKEYS_PLANS",
        DEFAULT_PLANS,
        _parse_plans,
        "requests per minute, monthly requests and max keys of each plan",
    ),
    Option(
        "APIKEYS_RATELIMIT_STORAGE_URI",
        "memory://",
        _parse_optional_string,
        "Flask-Limiter / limits storage, e.g. redis://localhost:6379/0",
    ),
    Option("APIKEYS_USAGE_TRACKING", True, _parse_bool, "record every authenticated request"),
    Option(
        "APIKEYS_ADMIN_KEY",
        None,
        _parse_admin_key,
        "a bootstrap key that manages every organization (kept hashed in memory only)",
    ),
    Option(
        "APIKEYS_ADMIN_URL_PREFIX",
        "/admin",
        _parse_url_prefix,
        "where the admin blueprint mounts; empty: no admin API",
    ),
    Option(
        "APIKEYS_HASH_SECRET",
        None,
        _parse_hash_secrets,
        "server-side secret(s) for HMAC-SHA256; the first hashes new keys",
    ),
    Option(
        "APIKEYS_HASH_SCHEMES",
        None,
        _parse_hash_schemes,
        "hash schemes, the first for new keys; keys under the others are rehashed on use",
    ),
    Option(
        "APIKEYS_TRUSTED_PROXIES",
        0,
        _parse_proxy_count,
        "how many proxies in front of the app set X-Forwarded-For (0: ignore that header)",
    ),
    Option(
        "APIKEYS_ROLES",
        {},
        parse_roles,
        "named roles: a mapping of role name to the scopes it grants",
    ),
    Option(
        "APIKEYS_CACHE_TTL",
        1.0,
        _parse_positive_number,
        "seconds a verified key is trusted without asking the database (0 turns it off)",
    ),
    Option(
        "APIKEYS_USAGE_MODE",
        "buffered",
        _parse_choice("buffered", "sync"),
        "buffered: written in batches off the request path; sync: before each response",
    ),
    Option(
        "APIKEYS_USAGE_FLUSH_INTERVAL",
        1.0,
        _parse_positive_number,
        "seconds between two writes of buffered usage (what a hard kill can lose at most)",
    ),
    Option(
        "APIKEYS_USAGE_BATCH_SIZE",
        500,
        _parse_count,
        "queued rows that trigger a write before the interval ends",
    ),
    Option(
        "APIKEYS_USAGE_MAX_QUEUE",
        100_000,
        _parse_count,
        "rows kept queued while the database is unreachable; older ones are dropped past it",
    ),
    Option(
        "APIKEYS_AUDIT",
        True,
        _parse_bool,
        "keep the hash-chained audit trail of key events and refused attempts",
    ),
    Option(
        "APIKEYS_MASK_KEYS_IN_LOGS",
        True,
        _parse_bool,
        "mask anything shaped like a key in every log record of the process",
    ),
    Option(
        "APIKEYS_RATELIMIT_ENABLED",
        True,
        _parse_bool,
        "enforce per-key and per-organization rate limits and monthly quotas",
    ),
    Option(
        "APIKEYS_RATELIMIT_FAIL_OPEN",
        True,
        _parse_bool,
        "when the rate-limit storage is unreachable, let authenticated requests through "
        "(true) or answer 503 (false)",
    ),
    Option(
        "APIKEYS_RATELIMIT_HEADERS",
        "x-ratelimit",
        _parse_header_families,
        "which rate-limit headers responses carry: x-ratelimit (X-RateLimit-Limit, -Remaining, "
        "-Reset), all (also the IETF draft's RateLimit and RateLimit-Policy), none; true/false "
        "mean x-ratelimit/none",
    ),
    Option(
        "APIKEYS_RATELIMIT_LEASE_SECONDS",
        0.1,
        _parse_positive_number,
        "with a remote storage (Redis), a busy key takes its units a few at a time for at most "
        "this long instead of one round trip per request; limits are never exceeded "
        "(0: one round trip per request)",
    ),
    Option(
        "APIKEYS_RATELIMIT_ORGANIZATION_WIDE",
        True,
        _parse_bool,
        "also limit all keys of an organization together to its per-minute limit",
    ),
    Option(
        "APIKEYS_FAILED_AUTH_LIMIT",
        "20/minute",
        _parse_optional_rate_limit,
        "failed authentication attempts allowed per client address (empty: no limit)",
    ),
    Option(
        "APIKEYS_ADMIN_RATE_LIMIT",
        "60/minute",
        _parse_optional_rate_limit,
        "each admin key's own budget on the admin API, apart from (and not taken from) its "
        "organization's limits and quota (empty: no limit)",
    ),
    Option(
        "APIKEYS_JWT_ENABLED",
        False,
        _parse_bool,
        "issue short-lived JWT access tokens for keys and accept them as Bearer credentials "
        "(needs the jwt extra)",
    ),
    Option(
        "APIKEYS_JWT_SECRET",
        None,
        _parse_jwt_secrets,
        "HS256 secret(s) of 32+ characters; the first signs unless a private key is set, "
        "all verify",
    ),
    Option(
        "APIKEYS_JWT_PRIVATE_KEYS",
        None,
        _parse_private_keys,
        "RSA (RS256) or P-256 EC (ES256) private keys in PEM, as a list or a mapping of key id "
        "to PEM; the first signs, all verify and are published at /.well-known/jwks.json",
    ),
    Option(
        "APIKEYS_JWT_LIFETIME",
        900,
        _parse_lifetime,
        "seconds an access token is valid (never past its key's own expiry)",
    ),
    Option(
        "APIKEYS_JWT_ISSUER",
        "flask-apikeys",
        _parse_text,
        "the iss claim of issued tokens, required on every token received",
    ),
    Option(
        "APIKEYS_JWT_AUDIENCE",
        "flask-apikeys",
        _parse_text,
        "the aud claim of issued tokens, required on every token received",
    ),
    Option(
        "APIKEYS_JWT_TOKEN_PATH",
        "/auth/token",
        _parse_path,
        "where a key is exchanged for an access token (POST)",
    ),
    Option(
        "APIKEYS_JWT_CHECK_REVOCATION",
        True,
        _parse_bool,
        "refuse a token as soon as its key is revoked or expires (within APIKEYS_CACHE_TTL), "
        "not only when the token expires",
    ),
    Option(
        "APIKEYS_INTROSPECTION_PATH",
        "/auth/introspect",
        _parse_optional_path,
        "where other services ask whether a key or token is active (RFC 7662, POST; empty: "
        "not mounted)",
    ),
    Option(
        "APIKEYS_INTROSPECTION_SCOPE",
        "apikeys:introspect",
        _parse_scope,
        "the scope a key needs to call the introspection endpoint (for its own organization)",
    ),
    Option(
        "APIKEYS_REVOCATION_PATH",
        "/auth/revoke",
        _parse_optional_path,
        "where a key, or an access token, is revoked by its holder or an admin (RFC 7009, "
        "POST; empty: not mounted)",
    ),
    # -- observability (docs/observability.rst) --
    Option(
        "APIKEYS_COST_TABLE",
        {},
        lambda value: parse_cost_table(_parse_json_if_text(value)),
        "prices in USD by URL rule, endpoint or ``*``: ``request`` and/or ``per_1k_tokens``; "
        "every authenticated request below 400 is priced into its usage row",
    ),
    Option(
        "APIKEYS_METRICS_PATH",
        "/apikeys/metrics",
        _parse_optional_path,
        "where APIKeysMetrics serves the Prometheus metrics (empty: not mounted)",
    ),
    Option(
        "APIKEYS_METRICS_SCOPE",
        "apikeys:metrics",
        _parse_scope,
        "the scope a key needs to read the metrics",
    ),
    Option(
        "APIKEYS_METRICS_KEY_ID_LABEL",
        False,
        _parse_bool,
        "add the key id as a label of apikeys_requests_total (one series per key)",
    ),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}

#: Options whose value is a secret: never logged, never copied from the environment.
SECRET_OPTIONS = frozenset(
    {
        "APIKEYS_ADMIN_KEY",
        "APIKEYS_HASH_SECRET",
        "APIKEYS_JWT_SECRET",
        "APIKEYS_JWT_PRIVATE_KEYS",
    }
)

#: Parsed values that make an app less safe than its default, and what they do. Coming from
#: the environment, a stray ``export`` in a shell would change that silently: ``init_app``
#: warns about each of them by name.
WEAKENING_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "APIKEYS_ENABLED": (lambda value: value is False, "no request is authenticated at all"),
    "APIKEYS_ALLOW_UNAUTHENTICATED": (
        lambda value: value is True,
        "requests without a key reach every view that does not demand scopes",
    ),
    "APIKEYS_PUBLIC_PATHS": (
        lambda value: not set(value) <= set(DEFAULT_PUBLIC_PATHS),
        "more paths are served without a key",
    ),
    "APIKEYS_RATELIMIT_ENABLED": (lambda value: value is False, "no rate limit or quota applies"),
    "APIKEYS_FAILED_AUTH_LIMIT": (lambda value: value is None, "key guessing is not slowed"),
    "APIKEYS_AUDIT": (lambda value: value is False, "no audit trail is kept"),
    "APIKEYS_MASK_KEYS_IN_LOGS": (
        lambda value: value is False,
        "keys that reach a log record are not masked",
    ),
    "APIKEYS_CACHE_TTL": (
        lambda value: value > 1.0,
        "a revoked key keeps working for longer in other processes",
    ),
    "APIKEYS_JWT_CHECK_REVOCATION": (
        lambda value: value is False,
        "access tokens of a revoked key stay valid until they expire",
    ),
}


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
    messages = []
    for name in names:
        check = WEAKENING_VALUES.get(name)
        if check is not None and check[0](settings.raw[name]):
            messages.append(f"{name} from the environment: {check[1]}")
    return messages


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
            if option.name not in SECRET_OPTIONS:
                app_config[option.name] = environ[option.name]
        else:
            app_config[option.name] = copy.deepcopy(option.default)


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration of one app."""

    enabled: bool
    allow_unauthenticated: bool
    public_paths: tuple[str, ...]
    key_prefix: str
    default_rate_limit: str
    plans: dict[str, Plan]
    ratelimit_storage_uri: str | None
    usage_tracking: bool
    #: SHA-256 of ``APIKEYS_ADMIN_KEY``: the key itself is not kept.
    admin_key_digest: bytes | None
    admin_url_prefix: str | None
    hash_secret: tuple[str, ...]
    hash_schemes: tuple[str, ...]
    cache_ttl: float
    roles: dict[str, tuple[str, ...]]
    trusted_proxies: int
    usage_mode: str
    usage_flush_interval: float
    usage_batch_size: int
    usage_max_queue: int
    audit: bool
    mask_keys_in_logs: bool
    ratelimit_enabled: bool = True
    ratelimit_fail_open: bool = True
    ratelimit_headers: str = "x-ratelimit"
    ratelimit_organization_wide: bool = True
    ratelimit_lease_seconds: float = 0.1
    failed_auth_limit: str | None = "20/minute"
    jwt_enabled: bool = False
    jwt_secret: tuple[str, ...] = field(default=(), repr=False)
    jwt_private_keys: tuple[tuple[str | None, str], ...] = field(default=(), repr=False)
    jwt_lifetime: int = 900
    jwt_issuer: str = "flask-apikeys"
    jwt_audience: str = "flask-apikeys"
    jwt_token_path: str = "/auth/token"  # noqa: S105 - a path, not a secret
    jwt_check_revocation: bool = True
    introspection_path: str | None = "/auth/introspect"
    introspection_scope: str = "apikeys:introspect"
    revocation_path: str | None = "/auth/revoke"
    admin_rate_limit: str | None = "60/minute"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


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
    values = {option.name: read_option(option, app_config, environ) for option in OPTIONS}
    hash_secrets = values["APIKEYS_HASH_SECRET"]
    schemes = values["APIKEYS_HASH_SCHEMES"]
    if schemes is None:
        schemes = (HMAC_SHA256, "hex_sha256") if hash_secrets else ("hex_sha256",)
    elif HMAC_SHA256 in schemes and not hash_secrets:
        raise ConfigError(
            "APIKEYS_HASH_SCHEMES names hmac_sha256 but APIKEYS_HASH_SECRET is not set: set a "
            "secret of 16+ characters, or drop hmac_sha256 from the schemes"
        )
    if values["APIKEYS_JWT_ENABLED"] and not (
        values["APIKEYS_JWT_SECRET"] or values["APIKEYS_JWT_PRIVATE_KEYS"]
    ):
        raise ConfigError(
            "APIKEYS_JWT_ENABLED is on but nothing can sign tokens: set APIKEYS_JWT_SECRET "
            "(HS256, 32+ characters) or APIKEYS_JWT_PRIVATE_KEYS (RS256/ES256 PEM)"
        )
    return Settings(
        enabled=values["APIKEYS_ENABLED"],
        allow_unauthenticated=values["APIKEYS_ALLOW_UNAUTHENTICATED"],
        public_paths=values["APIKEYS_PUBLIC_PATHS"],
        key_prefix=values["APIKEYS_KEY_PREFIX"],
        default_rate_limit=values["APIKEYS_DEFAULT_RATE_LIMIT"],
        plans=values["APIKEYS_PLANS"],
        ratelimit_storage_uri=values["APIKEYS_RATELIMIT_STORAGE_URI"],
        usage_tracking=values["APIKEYS_USAGE_TRACKING"],
        admin_key_digest=values["APIKEYS_ADMIN_KEY"],
        admin_url_prefix=values["APIKEYS_ADMIN_URL_PREFIX"],
        hash_secret=hash_secrets,
        hash_schemes=schemes,
        cache_ttl=values["APIKEYS_CACHE_TTL"],
        roles=values["APIKEYS_ROLES"],
        trusted_proxies=values["APIKEYS_TRUSTED_PROXIES"],
        usage_mode=values["APIKEYS_USAGE_MODE"],
        usage_flush_interval=values["APIKEYS_USAGE_FLUSH_INTERVAL"],
        usage_batch_size=values["APIKEYS_USAGE_BATCH_SIZE"],
        usage_max_queue=values["APIKEYS_USAGE_MAX_QUEUE"],
        audit=values["APIKEYS_AUDIT"],
        mask_keys_in_logs=values["APIKEYS_MASK_KEYS_IN_LOGS"],
        ratelimit_enabled=values["APIKEYS_RATELIMIT_ENABLED"],
        ratelimit_fail_open=values["APIKEYS_RATELIMIT_FAIL_OPEN"],
        ratelimit_headers=values["APIKEYS_RATELIMIT_HEADERS"],
        ratelimit_organization_wide=values["APIKEYS_RATELIMIT_ORGANIZATION_WIDE"],
        ratelimit_lease_seconds=values["APIKEYS_RATELIMIT_LEASE_SECONDS"],
        failed_auth_limit=values["APIKEYS_FAILED_AUTH_LIMIT"],
        jwt_enabled=values["APIKEYS_JWT_ENABLED"],
        jwt_secret=values["APIKEYS_JWT_SECRET"],
        jwt_private_keys=values["APIKEYS_JWT_PRIVATE_KEYS"],
        jwt_lifetime=values["APIKEYS_JWT_LIFETIME"],
        jwt_issuer=values["APIKEYS_JWT_ISSUER"],
        jwt_audience=values["APIKEYS_JWT_AUDIENCE"],
        jwt_token_path=values["APIKEYS_JWT_TOKEN_PATH"],
        jwt_check_revocation=values["APIKEYS_JWT_CHECK_REVOCATION"],
        introspection_path=values["APIKEYS_INTROSPECTION_PATH"],
        introspection_scope=values["APIKEYS_INTROSPECTION_SCOPE"],
        revocation_path=values["APIKEYS_REVOCATION_PATH"],
        admin_rate_limit=values["APIKEYS_ADMIN_RATE_LIMIT"],
        raw=values,
    )
