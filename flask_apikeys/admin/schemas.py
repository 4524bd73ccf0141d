"""Marshmallow schemas of the admin API: what it accepts and what it returns.

They check shape and types only (unknown fields, wrong types, malformed dates); every business
rule (lengths, bounds, known plan and level, parseable rate limit, scope grammar, free slug, key
limits) is checked once, in the service layer (:mod:`flask_apikeys.service.validation`), which
answers with the same 422 document naming each bad field. Enums are declared here for the OpenAPI
document only (``metadata``), not checked twice. The OpenAPI document is generated from these
classes, and the CLI prints its ``--json`` records with the ``*_document`` functions below.
"""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, RAISE, Schema, fields, validate

from ..config import Plan
from ..keys import ENVIRONMENTS
from ..models import APIKey, Organization
from ..permissions import LEVELS

#: Most items a list returns at once.
MAX_PAGE_SIZE = 500
#: Most scopes one request may list: a bound on the size of a request, not a rule of the
#: service (the Python API takes more; a token carries them all).
MAX_SCOPES_PER_REQUEST = 200


class StrictSchema(Schema):
    """Unknown fields are errors, so a typo never passes silently."""

    class Meta:
        unknown = RAISE


class JSONBoolean(fields.Boolean):
    """``true`` or ``false`` only: marshmallow's Boolean also takes ``0``, ``"yes"``, ``"on"``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class JSONFloat(fields.Float):
    """A JSON number only: marshmallow's Float also takes the string ``"24"``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


# -- organizations -----------------------------------------------------------------------------


class LimitsSchema(Schema):
    """An organization's effective limits: its own overrides, else its plan's."""

    requests_per_minute = fields.Integer(allow_none=True, metadata={"description": "null: none"})
    monthly_requests = fields.Integer(allow_none=True)
    max_keys = fields.Integer(allow_none=True)


class OrganizationSchema(Schema):
    """An organization as the admin API shows it."""

    id = fields.UUID(required=True)
    name = fields.String(required=True)
    slug = fields.String(required=True)
    email = fields.String(required=True)
    plan = fields.String(required=True)
    is_active = fields.Boolean(required=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    monthly_request_limit = fields.Integer(allow_none=True, required=True)
    rate_limit_per_minute = fields.Integer(allow_none=True, required=True)
    max_api_keys = fields.Integer(allow_none=True, required=True)
    limits = fields.Nested(LimitsSchema, required=True)
    plan_excess = fields.Dict(
        metadata={
            "description": "After a change of plan or limits only: working keys with scopes or "
            "a rate limit beyond the plan, and the working key count if above max_keys."
        }
    )


def _count() -> fields.Integer:
    # strict: 2.5 is refused, not silently cut to 2 (JSON bodies only; query strings are text)
    return fields.Integer(allow_none=True, strict=True)


def _email(**options: Any) -> fields.String:
    return fields.String(metadata={"format": "email"}, **options)


def _one_of(choices: tuple[str, ...], **options: Any) -> fields.String:
    """A string the service accepts only from ``choices``: an enum in the document."""
    return fields.String(metadata={"enum": list(choices)}, **options)


class OrganizationUpdateSchema(StrictSchema):
    """Fields an update may change; all optional."""

    name = fields.String()
    email = _email()
    plan = fields.String()
    is_active = JSONBoolean()
    monthly_request_limit = _count()
    rate_limit_per_minute = _count()
    max_api_keys = _count()


class OrganizationCreateSchema(OrganizationUpdateSchema):
    """A new organization: name and email are required, the plan defaults to ``free``."""

    name = fields.String(required=True)
    email = _email(required=True)
    plan = fields.String(load_default="free")
    slug = fields.String()


# -- keys --------------------------------------------------------------------------------------


class KeySchema(Schema):
    """A key's record. Never its secret or its hash: those are not even attributes here."""

    id = fields.UUID(required=True)
    organization_id = fields.UUID(required=True)
    name = fields.String(required=True)
    description = fields.String(allow_none=True, required=True)
    environment = _one_of(ENVIRONMENTS, required=True)
    prefix = fields.String(attribute="key_prefix", required=True)
    hint = fields.String(attribute="key_hint", required=True)
    scopes = fields.List(fields.String(), required=True)
    roles = fields.List(fields.String(), required=True)
    level = _one_of(LEVELS, allow_none=True, required=True)
    allowed_networks = fields.List(fields.String(), required=True)
    rate_limit = fields.String(attribute="custom_rate_limit", allow_none=True, required=True)
    metadata = fields.Dict(attribute="key_metadata", keys=fields.String(), required=True)
    is_active = fields.Boolean(required=True)
    created_at = fields.AwareDateTime(required=True)
    expires_at = fields.AwareDateTime(allow_none=True, required=True)
    last_used_at = fields.AwareDateTime(allow_none=True, required=True)
    revoked_at = fields.AwareDateTime(allow_none=True, required=True)
    revoked_by = fields.String(allow_none=True, required=True)
    revoked_reason = fields.String(allow_none=True, required=True)
    replaced_by_id = fields.UUID(allow_none=True, required=True)
    total_requests = fields.Integer(required=True)
    last_request_at = fields.AwareDateTime(allow_none=True, required=True)


class CreatedKeySchema(KeySchema):
    """A key just created or rotated: the only response that ever carries the full key."""

    key = fields.String(
        required=True, metadata={"description": "The full key. Shown this once, never again."}
    )
    replaces = fields.UUID(
        allow_none=True, metadata={"description": "After a rotation: the key it replaces."}
    )


class KeyUpdateSchema(StrictSchema):
    """Fields of a key that may change after creation; all optional."""

    name = fields.String()
    description = fields.String(allow_none=True)
    scopes = fields.List(fields.String(), validate=validate.Length(max=MAX_SCOPES_PER_REQUEST))
    roles = fields.List(fields.String())
    level = _one_of(LEVELS, allow_none=True)
    rate_limit = fields.String(
        allow_none=True, metadata={"description": "e.g. 100/minute or 10/second;1000/day"}
    )
    metadata = fields.Dict(keys=fields.String())
    allowed_networks = fields.List(fields.String())


class KeyCreateSchema(KeyUpdateSchema):
    """A new key: a name is required; expiry as days from now or as a time, not both."""

    name = fields.String(required=True)
    environment = _one_of(ENVIRONMENTS, load_default="live")
    expires_in_days = fields.Integer(allow_none=True, strict=True)
    expires_at = fields.AwareDateTime(allow_none=True)


class RevokeSchema(StrictSchema):
    """Why a key is revoked (kept with the key and in the audit trail)."""

    reason = fields.String(allow_none=True)


class RotateSchema(StrictSchema):
    """How long the old key keeps working next to the new one."""

    overlap_hours = JSONFloat(load_default=24.0, allow_nan=False)


# -- lists and usage ---------------------------------------------------------------------------


class PageQuerySchema(StrictSchema):
    """``limit`` and ``offset`` of a list."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))


class KeyPageQuerySchema(PageQuerySchema):
    """A page of keys, revoked ones included unless asked otherwise."""

    include_revoked = fields.Boolean(load_default=True)


def page_schema(item: type[Schema], name: str) -> type[Schema]:
    """A page of ``item``: the items, the total and the window that was asked for."""
    return Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item), required=True),
            "total": fields.Integer(required=True),
            "limit": fields.Integer(required=True),
            "offset": fields.Integer(required=True),
        },
        name=name,
    )


OrganizationPageSchema = page_schema(OrganizationSchema, "OrganizationPage")
KeyPageSchema = page_schema(KeySchema, "KeyPage")


class UsageQuerySchema(StrictSchema):
    """Usage from ``start`` up to ``end`` (excluded), for the organization or one key; without
    both, the current calendar month in UTC."""

    start = fields.Date(
        metadata={"description": "First day, with end. Default (neither given): this month, UTC."}
    )
    end = fields.Date(
        metadata={
            "description": "Day after the last, with start. Default (neither given): this month."
        }
    )
    key_id = fields.UUID(
        metadata={"description": "Only this key's usage; it must belong to the organization."}
    )


class DayUsageSchema(Schema):
    date = fields.String(required=True)
    requests = fields.Integer(required=True)
    errors = fields.Integer(required=True)


class EndpointUsageSchema(Schema):
    method = fields.String(required=True)
    endpoint = fields.String(required=True)
    requests = fields.Integer(required=True)
    errors = fields.Integer(required=True)
    average_ms = fields.Float(required=True)


class UsageSchema(Schema):
    """Totals, latency percentiles and breakdowns by day, endpoint, status class and error."""

    start = fields.String(required=True)
    end = fields.String(required=True)
    total_requests = fields.Integer(required=True)
    errors = fields.Integer(required=True)
    tokens_used = fields.Integer(required=True)
    cost_usd = fields.Float(required=True)
    average_ms = fields.Float(allow_none=True, required=True)
    p50_ms = fields.Float(allow_none=True, required=True)
    p95_ms = fields.Float(allow_none=True, required=True)
    by_day = fields.List(fields.Nested(DayUsageSchema), required=True)
    by_endpoint = fields.List(fields.Nested(EndpointUsageSchema), required=True)
    by_status_class = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    error_codes = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)


class ProblemSchema(Schema):
    """An RFC 9457 problem document, as every error of the extension is rendered."""

    class Meta:
        unknown = INCLUDE  # errors add members of their own (``required_scopes``, ...)

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    code = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(), metadata={"description": "With 422: each bad field's messages."}
    )


# -- records as documents: what the admin API answers and the CLI prints with --json -----------


def organization_document(organization: Organization, limits: Plan) -> dict[str, Any]:
    """An organization with ``limits``, its effective ones (its overrides, else its plan's)."""
    document: dict[str, Any] = OrganizationSchema().dump(organization)
    document["limits"] = LimitsSchema().dump(limits)
    return document


def key_document(api_key: APIKey) -> dict[str, Any]:
    """A key's record: never its secret or its hash."""
    return KeySchema().dump(api_key)  # type: ignore[no-any-return]


def created_key_document(api_key: APIKey, key: str, replaces: str | None = None) -> dict[str, Any]:
    """A key just created (or rotated, replacing ``replaces``), with the full key, this once."""
    document = {**key_document(api_key), "key": key}
    if replaces is not None:
        document["replaces"] = replaces
    return document


def usage_document(stats: dict[str, Any]) -> dict[str, Any]:
    """What the service's usage statistics are, as :class:`UsageSchema` declares them."""
    return UsageSchema().dump(stats)  # type: ignore[no-any-return]
