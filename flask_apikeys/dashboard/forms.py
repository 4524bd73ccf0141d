"""The dashboard's forms, read into the arguments the service layer takes.

Shape is checked with the admin API's own schemas, so a form accepts exactly what the admin API
accepts; every business rule (lengths, scope grammar, no escalation, key limits) stays in the
service layer, which answers with the same :class:`~flask_apikeys.errors.InvalidInput`.
Anything wrong raises ``InvalidInput`` naming the field, before anything is written.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from marshmallow import Schema, ValidationError

from ..admin import schemas
from ..errors import InvalidInput
from ..storable import unstorable_reason

#: Scopes are written one per line, or separated by commas or spaces.
SCOPE_SEPARATOR = re.compile(r"[\s,]+")
#: The longest period the usage page shows at once.
MAX_USAGE_DAYS = 366
#: The default period of the usage page: the last 30 days, today included.
DEFAULT_USAGE_DAYS = 30
#: Rows on one page of keys or of the audit trail.
PAGE_SIZE = 50


def _text(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "")
    problem = unstorable_reason(value)
    if problem is not None:
        raise InvalidInput("Some fields are not valid.", errors={name: [problem]})
    return value.strip()


def _load(schema: type[Schema], data: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema().load(data)  # type: ignore[no-any-return]
    except ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {"_form": error.messages}
        raise InvalidInput("Some fields are not valid.", errors=messages) from None


def _scopes(form: Mapping[str, str]) -> list[str]:
    return [scope for scope in SCOPE_SEPARATOR.split(_text(form, "scopes")) if scope]


def _whole_number(form: Mapping[str, str], name: str) -> int | None:
    text = _text(form, name)
    if not text:
        return None
    if not re.fullmatch(r"\d{1,6}", text):
        raise InvalidInput("Some fields are not valid.", errors={name: ["a whole number of days"]})
    return int(text)


def key_create_values(form: Mapping[str, str]) -> dict[str, Any]:
    """Name, description, environment, scopes and expiry of a new key."""
    data: dict[str, Any] = {
        "name": _text(form, "name"),
        "environment": _text(form, "environment") or "live",
        "scopes": _scopes(form),
    }
    if description := _text(form, "description"):
        data["description"] = description
    days = _whole_number(form, "expires_in_days")
    if days is not None:
        data["expires_in_days"] = days
    if not data["name"]:
        raise InvalidInput("Some fields are not valid.", errors={"name": ["a name is required"]})
    return _load(schemas.KeyCreateSchema, data)


def key_update_values(form: Mapping[str, str]) -> dict[str, Any]:
    """Name, description and scopes of a key (all three are on the form, so all are set)."""
    data: dict[str, Any] = {
        "name": _text(form, "name"),
        "description": _text(form, "description") or None,
        "scopes": _scopes(form),
    }
    if not data["name"]:
        raise InvalidInput("Some fields are not valid.", errors={"name": ["a name is required"]})
    return _load(schemas.KeyUpdateSchema, data)


def rotate_values(form: Mapping[str, str]) -> dict[str, Any]:
    """The overlap of a rotation, in hours (the service checks its bounds)."""
    text = _text(form, "overlap_hours") or "24"
    if not re.fullmatch(r"\d{1,4}(\.\d{1,2})?", text):
        raise InvalidInput(
            "Some fields are not valid.", errors={"overlap_hours": ["a number of hours"]}
        )
    return _load(schemas.RotateSchema, {"overlap_hours": float(text)})


def revoke_values(form: Mapping[str, str]) -> dict[str, Any]:
    """Why the key is revoked (optional)."""
    return _load(schemas.RevokeSchema, {"reason": _text(form, "reason") or None})


def optional_date(args: Mapping[str, str], name: str) -> date | None:
    text = _text(args, name)
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            "Some fields are not valid.", errors={name: ["a date such as 2026-01-31"]}
        ) from None


def optional_uuid(args: Mapping[str, str], name: str) -> uuid.UUID | None:
    text = _text(args, name)
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput("Some fields are not valid.", errors={name: ["a key id"]}) from None


def period(args: Mapping[str, str], today: date) -> tuple[date, date]:
    """The first and last day (both shown) of a usage or audit period; the last 30 days by
    default. Returned as (start, end) with ``end`` excluded, as the service takes them."""
    first, last = optional_date(args, "start"), optional_date(args, "end")
    last = last or today
    first = first or last - timedelta(days=DEFAULT_USAGE_DAYS - 1)
    if last < first:
        raise InvalidInput("Some fields are not valid.", errors={"end": ["on or after start"]})
    if (last - first).days >= MAX_USAGE_DAYS:
        raise InvalidInput(
            "Some fields are not valid.", errors={"end": [f"at most {MAX_USAGE_DAYS} days"]}
        )
    return first, last + timedelta(days=1)


def page_number(args: Mapping[str, str]) -> int:
    text = _text(args, "page") or "1"
    if not re.fullmatch(r"[1-9]\d{0,5}", text):
        raise InvalidInput("Some fields are not valid.", errors={"page": ["a page number"]})
    return int(text)
