"""The parsers of ``APIKEYS_*`` values: each takes what ``app.config`` or the environment holds
and returns the value the app runs with, or raises ``ValueError`` saying what it accepts.

Values from the environment are text, so every parser also takes the text form (JSON for lists
and mappings, lists also comma-separated). Parsers that differ only in a bound or a length are
made by one factory each (:func:`number`, :func:`secret_list`, :func:`optional`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from limits import parse_many
from limits.storage import Storage

from .hashing import SUPPORTED_SCHEMES, admin_key_digest
from .keys import PREFIX_PATTERN
from .scopes import normalize_scopes

Parsed = TypeVar("Parsed")
Parser = Callable[[Any], Parsed]

#: The bootstrap admin key manages every organization: it must not be guessable.
MIN_ADMIN_KEY_LENGTH = 32
ROLE_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_\-]{0,49}")
BARE_NUMBER = re.compile(r"[0-9]+")
HEADER_FAMILIES = ("x-ratelimit", "all", "none")
PLAN_LIMITS = ("requests_per_minute", "monthly_requests", "max_keys")
#: ``APIKEYS_RATELIMIT_STORAGE_URI`` value that keeps the counters in the app's own database.
DATABASE_STORAGE_URI = "database"
#: The client library each family of limits storages imports when it is first used, and how
#: to install it: checked at start, so that a missing one is not a 500 on the first request.
STORAGE_CLIENTS = {
    "redis": ("redis", "pip install 'flask-apikeys[redis]'"),
    "valkey": ("valkey", "pip install valkey"),
    "memcached": ("pymemcache", "pip install pymemcache"),
    "mongodb": ("pymongo", "pip install pymongo"),
}
#: What an ``APIKEYS_COST_TABLE`` entry may price.
COST_PRICE_FIELDS = frozenset({"request", "per_1k_tokens"})


@dataclass(frozen=True, slots=True)
class Plan:
    """What an organization on a plan may do; ``None`` means unlimited."""

    name: str
    requests_per_minute: int | None
    monthly_requests: int | None
    max_keys: int | None
    #: The scopes keys of this plan may be given at most; ``None`` means any.
    scopes: tuple[str, ...] | None = None


# -- factories ---------------------------------------------------------------------------------


def optional(parse: Parser[Parsed], *, empty: str) -> Parser[Parsed | None]:
    """``parse``, except that a missing or empty value is ``None``, which means ``empty``."""

    def parse_optional(value: Any) -> Parsed | None:
        if value is None or value == "":
            return None
        try:
            return parse(value)
        except ValueError as error:
            raise ValueError(f"{error}, or an empty value ({empty})") from None

    return parse_optional


def number(
    kind: type[int] | type[float], *, minimum: int, maximum: int | None = None, what: str
) -> Parser[Any]:
    """A finite number of ``kind`` from ``minimum`` (to ``maximum``); ``what`` names it in the
    message. ``True`` is not 1, and ``2.5`` is not a whole number."""
    bounds = f"{minimum} or more" if maximum is None else f"from {minimum} to {maximum}"
    message = f"expected {what}, {bounds}"

    def parse_number(value: Any) -> int | float:
        if isinstance(value, bool):
            raise ValueError(message)
        try:
            parsed = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(message) from None
        if (
            (isinstance(value, float) and kind is int and parsed != value)
            or not math.isfinite(parsed)
            or parsed < minimum
            or (maximum is not None and parsed > maximum)
        ):
            raise ValueError(message)
        return parsed

    return parse_number


def secret_list(min_length: int, *, why: str = "") -> Parser[tuple[str, ...]]:
    """One secret, or a JSON list of them, each at least ``min_length`` characters long."""

    def parse_secrets(value: Any) -> tuple[str, ...]:
        if value is None or value == "":
            return ()
        if isinstance(value, str) and not value.lstrip().startswith("["):
            value = [value]
        secrets_list = string_list(value)
        if any(len(secret) < min_length for secret in secrets_list):
            raise ValueError(f"each secret must be at least {min_length} characters{why}")
        return secrets_list

    return parse_secrets


def choice(*choices: str) -> Parser[str]:
    def parse_choice(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return str(value)

    return parse_choice


# -- scalars -----------------------------------------------------------------------------------


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false (or 1/0, yes/no, on/off)")


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def storage_schemes() -> set[str]:
    """The schemes of limits' synchronous storages, custom ones included: each subclass of
    ``limits.storage.Storage`` declares its own in ``STORAGE_SCHEME`` (asyncio storages have
    another base, and a WSGI app cannot count in them)."""
    schemes: set[str] = set()
    pending: list[type] = [Storage]
    while pending:
        storage = pending.pop()
        pending.extend(storage.__subclasses__())
        schemes.update(getattr(storage, "STORAGE_SCHEME", None) or ())
    return schemes


def storage_uri(value: Any) -> str:
    """``database``, or a limits storage URI whose scheme limits knows and whose client
    library is installed. The message names the scheme only: the URI may hold a password."""
    uri = text(value)
    if uri.rstrip(":/") == DATABASE_STORAGE_URI:
        return uri
    scheme = uri.partition("://")[0] if "://" in uri else ""
    schemes = storage_schemes()
    if scheme not in schemes:
        raise ValueError(
            "expected memory://, database, or a limits storage URI such as "
            f"redis://host:6379/0 (schemes: {', '.join(sorted(schemes))}); "
            f"got the scheme {scheme!r}"
        )
    family = next((name for name in STORAGE_CLIENTS if scheme.startswith(name)), None)
    if family is not None:
        module, install = STORAGE_CLIENTS[family]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"{scheme}:// needs the {module} package: {install}")
    return uri


def path(value: Any) -> str:
    """A path a view is mounted at: no ``<`` (that would be a Flask URL variable)."""
    if not isinstance(value, str) or not value.startswith("/") or "<" in value:
        raise ValueError("expected a path that starts with '/'")
    return value


def url_prefix(value: Any) -> str:
    """Where a blueprint mounts: a path other than ``/``, without its trailing slash."""
    if not isinstance(value, str) or not value.startswith("/") or value == "/" or "<" in value:
        raise ValueError("expected a path such as /admin")
    return value.rstrip("/")


def key_prefix(value: Any) -> str:
    if not isinstance(value, str) or not PREFIX_PATTERN.fullmatch(value):
        raise ValueError("expected 1-16 lowercase letters or digits, starting with a letter")
    return value


def admin_key(value: Any) -> bytes:
    """Keep only the SHA-256 of the bootstrap admin key (see :func:`hashing.admin_key_digest`)."""
    if not isinstance(value, str) or len(value) < MIN_ADMIN_KEY_LENGTH or value != value.strip():
        raise ValueError(
            f"expected at least {MIN_ADMIN_KEY_LENGTH} characters without surrounding spaces, "
            "e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return admin_key_digest(value)


def rate_limit(value: Any) -> str:
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


def header_families(value: Any) -> str:
    """One of :data:`HEADER_FAMILIES`, or a boolean (true: ``x-ratelimit``, false: ``none``)."""
    if isinstance(value, str) and value.strip().lower() in HEADER_FAMILIES:
        return value.strip().lower()
    try:
        return "x-ratelimit" if boolean(value) else "none"
    except ValueError:
        raise ValueError(f"expected one of: {', '.join(HEADER_FAMILIES)} (or true/false)") from None


def scope(value: Any) -> str:
    scopes = normalize_scopes([value] if isinstance(value, str) else value)
    if len(scopes) != 1:
        raise ValueError("expected one scope such as 'apikeys:introspect'")
    return scopes[0]


# -- lists and mappings ------------------------------------------------------------------------


def json_if_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"expected JSON ({error.msg})") from None
    return value


def string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and not value.lstrip().startswith("["):
        value = [part.strip() for part in value.split(",") if part.strip()]
    value = json_if_text(value)
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of strings (JSON or comma-separated)")
    return tuple(value)


def public_paths(value: Any) -> tuple[str, ...]:
    paths = string_list(value)
    if not all(path.startswith("/") for path in paths):
        raise ValueError("expected paths that start with '/'")
    for path in paths:
        if "*" in path and not (path.endswith("/*") and path.count("*") == 1 and path != "/*"):
            raise ValueError(
                f"{path!r}: '*' is only accepted as the last part of a prefix such as /static/*"
            )
    return paths


def cost_table(value: Any) -> dict[str, dict[str, float]]:
    """``APIKEYS_COST_TABLE`` with its prices as floats; ``ValueError`` naming a wrong entry."""
    table = json_if_text(value)
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


def plans(value: Any) -> dict[str, Plan]:
    value = json_if_text(value)
    if not isinstance(value, Mapping) or not value:
        raise ValueError("expected a mapping of plan name to its limits")
    parsed = {}
    for name, limits in value.items():
        if not isinstance(limits, Mapping) or not (
            set(PLAN_LIMITS) <= set(limits) <= {*PLAN_LIMITS, "scopes"}
        ):
            raise ValueError(
                f"plan {name!r} must give exactly {', '.join(PLAN_LIMITS)} (and optionally scopes)"
            )
        for limit in PLAN_LIMITS:
            amount = limits[limit]
            if amount is not None and (not isinstance(amount, int) or amount < 0):
                raise ValueError(f"plan {name!r}: {limit} must be a whole number or null")
        scopes = limits.get("scopes")
        if scopes is not None:
            scopes = tuple(normalize_scopes(string_list(scopes)))
        parsed[str(name)] = Plan(
            name=str(name), **{limit: limits[limit] for limit in PLAN_LIMITS}, scopes=scopes
        )
    return parsed


def parse_roles(value: Any) -> dict[str, tuple[str, ...]]:
    """A mapping of role name to the scopes it grants (also what ``define_role`` checks)."""
    value = json_if_text(value)
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of role name to a list of scopes")
    roles = {}
    for name, scopes in value.items():
        if not isinstance(name, str) or not ROLE_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"role name {name!r} must be lowercase letters, digits, '-' or '_'")
        roles[name] = tuple(normalize_scopes(string_list(scopes)))
    return roles


def hash_schemes(value: Any) -> tuple[str, ...] | None:
    """The schemes, or ``None`` for "chosen from whether a hash secret is set"."""
    if value is None or value == "":
        return None
    schemes = string_list(value)
    unknown = [scheme for scheme in schemes if scheme not in SUPPORTED_SCHEMES]
    if not schemes or unknown:
        raise ValueError(
            f"unknown scheme(s) {unknown}; accepted: {', '.join(SUPPORTED_SCHEMES)} (salted "
            "password hashes such as bcrypt cannot be looked up through an index)"
        )
    return schemes


def private_keys(value: Any) -> tuple[tuple[str | None, str], ...]:
    """PEMs as a list (key ids derived from the keys) or a mapping of key id to PEM."""
    if value is None or value == "":
        return ()
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        value = [value]
    value = json_if_text(value)
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
