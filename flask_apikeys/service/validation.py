"""Checks of organization and key fields, shared by creation and partial updates.

Each checker takes the raw value and returns the value to store, or raises ``ValueError`` with a
message for the field. :func:`check_fields` runs the checkers of the fields given and reports
every bad field at once as :class:`~flask_apikeys.errors.InvalidInput`, so a caller learns all
its mistakes in one round trip and nothing is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from limits import parse_many

from .. import keys
from ..errors import InvalidInput
from ..models import utcnow
from ..network import parse_networks
from ..permissions import LEVELS
from ..scopes import normalize_scopes
from ..storable import MAX_INTEGER, json_problem, unstorable_reason

EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
SLUG_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_METADATA_BYTES = 4096
#: The furthest ahead a key may expire (as ``expires_in_days`` allows): a rotation then adds
#: the key's lifetime and an overlap to now without leaving the calendar.
MAX_LIFETIME = timedelta(days=3650)
Checker = Callable[[Any], Any]


def text(maximum: int, *, required: bool) -> Checker:
    """A string of at most ``maximum`` characters (stripped), optional unless ``required``."""

    def check(value: Any) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or len(value) > maximum or (required and not value.strip()):
            raise ValueError(
                f"a {'non-empty ' if required else ''}text of at most {maximum} characters"
            )
        storable(value)
        return value.strip()

    return check


def storable(value: str) -> str:
    """``value`` if a database can store it (no NUL, no lone surrogate), else ``ValueError``."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise ValueError(f"a text that {reason}")
    return value


def email(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 320 or not EMAIL_PATTERN.fullmatch(value):
        raise ValueError("a valid email address")
    return storable(value)


def slug(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 100 or not SLUG_PATTERN.fullmatch(value):
        raise ValueError("lowercase letters, digits and '-', at most 100 characters")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def optional_count(value: Any) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INTEGER
    ):
        raise ValueError(f"a whole number from 0 to {MAX_INTEGER}, or null for the plan's value")
    return value


def one_of(choices: Collection[str], *, optional: bool = False) -> Checker:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if value not in choices:
            raise ValueError(f"one of: {', '.join(choices)}")
        return value

    return check


def scope_list(value: Any) -> list[str]:
    return normalize_scopes(value)


def role_list(defined_roles: Collection[str]) -> Checker:
    def check(value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple | set | frozenset):
            raise ValueError("a list of role names")
        unknown = sorted(str(role) for role in value if role not in defined_roles)
        if unknown:
            known = ", ".join(sorted(defined_roles)) or "none are configured in APIKEYS_ROLES"
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; known: {known}")
        return sorted(set(value))

    return check


def rate_limit(value: Any) -> str | None:
    if value is None:
        return None
    try:
        if (
            not isinstance(value, str)
            or len(value) > 100
            or unstorable_reason(value)
            or not parse_many(value)
        ):
            raise ValueError
    except ValueError:
        raise ValueError(
            "a rate limit such as '100/minute' or '10/second;1000/day' (at most 100 characters)"
        ) from None
    return value


def metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"a JSON object of at most {MAX_METADATA_BYTES} bytes")
    # Before measuring: json.dumps itself fails on nesting deep enough.
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(f"a JSON object that every database stores: {problem}")
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        size = None
    if size is None or size > MAX_METADATA_BYTES:
        raise ValueError(f"a JSON object of at most {MAX_METADATA_BYTES} bytes")
    return dict(value)


def expires_in_days(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3650:
        raise ValueError("a whole number of days from 1 to 3650")
    return utcnow() + timedelta(days=value)


def expires_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError("a timezone-aware datetime")
    now = utcnow()
    if value <= now:
        raise ValueError("a time in the future")
    if value > now + MAX_LIFETIME:
        raise ValueError(f"at most {MAX_LIFETIME.days} days from now")
    return value


def environment(value: Any) -> str:
    return one_of(keys.ENVIRONMENTS)(value)  # type: ignore[no-any-return]


def networks(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ValueError("a list of networks such as 203.0.113.0/24 or 2001:db8::/32")
    return parse_networks(value)


def check_fields(values: Mapping[str, Any], checkers: Mapping[str, Checker]) -> dict[str, Any]:
    """Run the checker of every given field; raise one ``InvalidInput`` naming each bad field."""
    errors: dict[str, list[str]] = {}
    checked: dict[str, Any] = {}
    for field, value in values.items():
        checker = checkers.get(field)
        if checker is None:
            errors[field] = ["unknown field"]
            continue
        try:
            checked[field] = checker(value)
        except ValueError as error:
            errors[field] = [str(error)]
        except TypeError:  # e.g. a list where a name was due: unhashable, not comparable
            errors[field] = [f"not a {type(value).__name__}: see the field's documentation"]
    if errors:
        raise InvalidInput(errors=errors)
    return checked


def organization_checkers(plans: Collection[str]) -> dict[str, Checker]:
    """Checkers for every writable organization field."""
    return {
        "name": text(200, required=True),
        "email": email,
        "plan": one_of(plans),
        "is_active": boolean,
        "monthly_request_limit": optional_count,
        "rate_limit_per_minute": optional_count,
        "max_api_keys": optional_count,
    }


def key_checkers(defined_roles: Collection[str]) -> dict[str, Checker]:
    """Checkers for every writable key field (``expires_*`` become ``expires_at``)."""
    return {
        "name": text(200, required=True),
        "description": text(2000, required=False),
        "environment": environment,
        "scopes": scope_list,
        "roles": role_list(defined_roles),
        "level": one_of(LEVELS, optional=True),
        "rate_limit": rate_limit,
        "metadata": metadata,
        "allowed_networks": networks,
        "expires_in_days": expires_in_days,
        "expires_at": expires_at,
    }
