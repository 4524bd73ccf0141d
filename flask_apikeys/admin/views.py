"""The admin routes: parse with a schema, call the service layer, dump with a schema.

Each route is declared once, with :func:`operation`, in :data:`OPERATIONS`; the blueprint and
the OpenAPI document are both built from that table, so they cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Response, jsonify, request, url_for
from marshmallow import Schema, ValidationError

from ..bodies import read_body
from ..errors import InvalidInput, MalformedRequest
from ..models import Organization
from ..service.organizations import PLAN_FIELDS
from ..state import get_state
from ..storable import json_problem, storable_text, unstorable_reason
from ..usage.stats import current_month, month_bounds
from . import schemas
from .access import caller, managed_organization, require_bootstrap

View = Callable[..., Response | tuple[Response, int]]
#: Organization fields only the bootstrap key may change (they set what the organization pays
#: for, or switch it off); an organization's own admin may change its name and email.
BOOTSTRAP_ONLY_FIELDS = frozenset(
    {"plan", "is_active", "monthly_request_limit", "rate_limit_per_minute", "max_api_keys"}
)


@dataclass(frozen=True)
class Operation:
    """One admin route, as Flask and the OpenAPI document both need it."""

    method: str
    path: str
    view: View
    summary: str
    response: type[Schema] | None
    status: int = 200
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    errors: Sequence[int] = ()

    @property
    def endpoint(self) -> str:
        return self.view.__name__

    @property
    def openapi_path(self) -> str:
        """``/organizations/<org_id>`` → ``/organizations/{org_id}``."""
        return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", self.path)


OPERATIONS: list[Operation] = []


def operation(method: str, path: str, summary: str, **details: Any) -> Callable[[View], View]:
    """Declare a view as an admin route (see :class:`Operation` for ``details``)."""

    def register(view: View) -> View:
        OPERATIONS.append(Operation(method, path, view, summary, **details))
        return view

    return register


def load_body(schema: type[Schema]) -> dict[str, Any]:
    """The JSON object of the request, checked by ``schema`` (an empty body is ``{}``)."""
    raw = read_body(request._get_current_object())  # type: ignore[attr-defined]
    data: Any = {}
    if raw.strip():
        try:
            data = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):  # RecursionError: nested beyond the parser's stack
            raise MalformedRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.", errors={"_body": ["an object"]})
    _refuse_unstorable(data)
    return _load(schema, data)


def load_query(schema: type[Schema]) -> dict[str, Any]:
    """The query string, checked by ``schema``."""
    data = request.args.to_dict()
    _refuse_unstorable(data)
    return _load(schema, data)


def _refuse_constant(name: str) -> Any:
    """``NaN``, ``Infinity``: Python's parser takes them, JSON (and PostgreSQL) does not."""
    raise ValueError(f"{name} is not JSON")


def _refuse_unstorable(data: dict[str, Any]) -> None:
    """422 for any field holding what no database stores (a NUL, a lone surrogate, nesting
    deeper than :data:`~flask_apikeys.storable.MAX_JSON_DEPTH`), before anything else looks."""
    errors = {}
    for field, value in data.items():
        problem = unstorable_reason(field) or json_problem(value, depth=1)
        if problem is not None:
            errors[storable_text(field, 100)] = [problem]
    if errors:
        raise InvalidInput("Some fields are not valid.", errors=errors)


def _load(schema: type[Schema], data: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema().load(data)  # type: ignore[no-any-return]
    except ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {"_body": error.messages}
        raise InvalidInput("Some fields are not valid.", errors=messages) from None


def organization_document(organization: Organization) -> dict[str, Any]:
    return schemas.organization_document(
        organization, get_state().service.organizations.plan_of(organization)
    )


def created(document: dict[str, Any], location: str) -> tuple[Response, int]:
    response = jsonify(document)
    response.headers["Location"] = location
    response.headers["Cache-Control"] = "no-store"  # it may hold a key, shown this once
    return response, 201


# -- organizations -----------------------------------------------------------------------------


@operation(
    "POST",
    "/organizations",
    "Create an organization (bootstrap admin key only)",
    body=schemas.OrganizationCreateSchema,
    response=schemas.OrganizationSchema,
    status=201,
    errors=(400, 401, 403, 422),
)
def create_organization() -> tuple[Response, int]:
    """A new customer with its plan; only the bootstrap key may create one. Its slug is made
    from the name unless given, and must be free (else 422)."""
    require_bootstrap("create organizations")
    values = load_body(schemas.OrganizationCreateSchema)
    organization = get_state().service.organizations.create_organization(
        actor=caller().actor, **values
    )
    location = url_for(".get_organization", org_id=organization.id)
    return created(organization_document(organization), location)


@operation(
    "GET",
    "/organizations",
    "List the organizations the caller manages",
    query=schemas.PageQuerySchema,
    response=schemas.OrganizationPageSchema,
    errors=(401, 403, 422),
)
def list_organizations() -> Response:
    """A page of organizations, oldest first. The bootstrap key sees all of them; an
    organization's admin key sees its own only."""
    page = load_query(schemas.PageQuerySchema)
    key = caller().key
    if key is None:
        organizations, total = get_state().service.organizations.list_organizations(**page)
    else:  # an organization's admin sees its own organization only
        organizations = [get_state().service.organizations.get_organization(key.organization.id)]
        total, organizations = 1, organizations[page["offset"] : page["offset"] + page["limit"]]
    items = [organization_document(organization) for organization in organizations]
    return jsonify(items=items, total=total, **page)


@operation(
    "GET",
    "/organizations/<org_id>",
    "Show an organization",
    response=schemas.OrganizationSchema,
    errors=(401, 403, 404),
)
def get_organization(org_id: str) -> Response:
    """One organization with its effective limits (its own overrides, else its plan's).
    Another organization's id answers 404, as an unknown one does."""
    return jsonify(organization_document(managed_organization(org_id)))


@operation(
    "PUT",
    "/organizations/<org_id>",
    "Change an organization (its own admin: name and email only)",
    body=schemas.OrganizationUpdateSchema,
    response=schemas.OrganizationSchema,
    errors=(400, 401, 403, 404, 422),
)
def update_organization(org_id: str) -> Response:
    """Change some fields; the ones left out stay. Plan, limits and ``is_active`` are for
    the bootstrap key only (403 for an organization's admin)."""
    organization = managed_organization(org_id)
    changes = load_body(schemas.OrganizationUpdateSchema)
    if BOOTSTRAP_ONLY_FIELDS & changes.keys():
        require_bootstrap("change " + ", ".join(sorted(BOOTSTRAP_ONLY_FIELDS & changes.keys())))
    organization = get_state().service.organizations.update_organization(
        organization, actor=caller().actor, **changes
    )
    document = organization_document(organization)
    if PLAN_FIELDS & changes.keys():  # say what the change left beyond the plan
        document["plan_excess"] = get_state().service.organizations.plan_excess(organization)
    return jsonify(document)


# -- keys --------------------------------------------------------------------------------------


@operation(
    "POST",
    "/organizations/<org_id>/keys",
    "Create a key; the response holds the full key, this once",
    body=schemas.KeyCreateSchema,
    response=schemas.CreatedKeySchema,
    status=201,
    errors=(400, 401, 403, 404, 409, 422),
)
def create_key(org_id: str) -> tuple[Response, int]:
    """A new key for the organization. The response is the only time the full key is shown;
    store it now. A key may not be given scopes beyond the creating key's own (403), nor
    more keys than the plan allows (409)."""
    organization = managed_organization(org_id)
    values = load_body(schemas.KeyCreateSchema)
    new = get_state().service.keys.create_key(
        organization, granted_by=caller().key, actor=caller().actor, **values
    )
    document = schemas.created_key_document(new.api_key, new.key)
    return created(document, url_for(".get_key", org_id=organization.id, key_id=new.api_key.id))


@operation(
    "GET",
    "/organizations/<org_id>/keys",
    "List an organization's keys (never a secret)",
    query=schemas.KeyPageQuerySchema,
    response=schemas.KeyPageSchema,
    errors=(401, 403, 404, 422),
)
def list_keys(org_id: str) -> Response:
    """A page of the organization's keys, newest first, revoked ones included unless
    ``include_revoked`` is false. Never a secret or a hash."""
    organization = managed_organization(org_id)
    page = load_query(schemas.KeyPageQuerySchema)
    api_keys, total = get_state().service.keys.list_keys(organization, **page)
    items = [schemas.key_document(api_key) for api_key in api_keys]
    return jsonify(items=items, total=total, limit=page["limit"], offset=page["offset"])


@operation(
    "GET",
    "/organizations/<org_id>/keys/<key_id>",
    "Show a key (never its secret)",
    response=schemas.KeySchema,
    errors=(401, 403, 404),
)
def get_key(org_id: str, key_id: str) -> Response:
    """One key's record: prefix, hint, scopes, limits, dates. Never its secret or hash."""
    organization = managed_organization(org_id)
    api_key = get_state().service.keys.get_key(key_id, organization=organization)
    return jsonify(schemas.key_document(api_key))


@operation(
    "PATCH",
    "/organizations/<org_id>/keys/<key_id>",
    "Change a key's name, description, scopes, roles, level, limit, metadata or networks",
    body=schemas.KeyUpdateSchema,
    response=schemas.KeySchema,
    errors=(400, 401, 403, 404, 409, 422),
)
def update_key(org_id: str, key_id: str) -> Response:
    """Change some of a key's fields; the ones left out stay. Applies to the key's next
    request. A revoked key cannot be changed (409)."""
    organization = managed_organization(org_id)
    changes = load_body(schemas.KeyUpdateSchema)
    api_key = get_state().service.keys.update_key(
        key_id,
        organization=organization,
        granted_by=caller().key,
        actor=caller().actor,
        **changes,
    )
    return jsonify(schemas.key_document(api_key))


@operation(
    "DELETE",
    "/organizations/<org_id>/keys/<key_id>",
    "Revoke a key for good (optional JSON body with a reason)",
    body=schemas.RevokeSchema,
    response=schemas.KeySchema,
    errors=(400, 401, 403, 404, 409, 422),
)
def revoke_key(org_id: str, key_id: str) -> Response:
    """Revoke a key at once and for good; its next request is refused with 401. Revoking
    twice answers 409."""
    organization = managed_organization(org_id)
    values = load_body(schemas.RevokeSchema)
    api_key = get_state().service.keys.revoke_key(
        key_id,
        reason=values.get("reason"),
        revoked_by=caller().actor,
        organization=organization,
    )
    return jsonify(schemas.key_document(api_key))


@operation(
    "POST",
    "/organizations/<org_id>/keys/<key_id>/rotate",
    "Replace a key; the old one works for overlap_hours more",
    body=schemas.RotateSchema,
    response=schemas.CreatedKeySchema,
    status=201,
    errors=(400, 401, 403, 404, 409, 422),
)
def rotate_key(org_id: str, key_id: str) -> tuple[Response, int]:
    """A new key with the same settings; the old one keeps working for ``overlap_hours`` (0:
    stops now). The response shows the new key this once."""
    organization = managed_organization(org_id)
    values = load_body(schemas.RotateSchema)
    new = get_state().service.keys.rotate_key(
        key_id,
        rotated_by=caller().actor,
        organization=organization,
        granted_by=caller().key,
        **values,
    )
    document = schemas.created_key_document(new.api_key, new.key, replaces=str(key_id))
    return created(document, url_for(".get_key", org_id=organization.id, key_id=new.api_key.id))


# -- usage -------------------------------------------------------------------------------------


@operation(
    "GET",
    "/organizations/<org_id>/usage",
    "Usage between two dates (end excluded), for the organization or one key; without "
    "start and end, the current calendar month (UTC)",
    query=schemas.UsageQuerySchema,
    response=schemas.UsageSchema,
    errors=(401, 403, 404, 422),
)
def usage(org_id: str) -> Response:
    """Requests, errors, latency and cost from ``start`` up to ``end`` (excluded), in UTC
    days, for the whole organization or one of its keys."""
    organization = managed_organization(org_id)
    query = load_query(schemas.UsageQuerySchema)
    start, end = query.get("start"), query.get("end")
    if start is None and end is None:
        start, end = month_bounds(current_month())
    elif start is None or end is None:
        missing_bound = "start" if start is None else "end"
        raise InvalidInput(
            "Give both start and end, or neither for the current month (UTC).",
            errors={missing_bound: ["required with the other bound"]},
        )
    stats = get_state().service.reports.usage_stats(
        organization, start=start, end=end, key=query.get("key_id")
    )
    return jsonify(schemas.usage_document(stats))
