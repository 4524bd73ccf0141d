"""The admin API's OpenAPI 3 document, built from the route table and its marshmallow schemas.

Every status an operation can answer is declared, each error with the problem document and the
headers it carries (``WWW-Authenticate`` with 401, ``Retry-After`` with 429), so that generated
clients and contract testers (openapi-python-client, schemathesis) meet no undocumented answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from .._version import __version__
from ..keys import ENVIRONMENTS
from ..permissions import LEVELS
from .schemas import ProblemSchema
from .views import OPERATIONS, Operation

PROBLEM_CONTENT_TYPE = "application/problem+json"
SECURITY_SCHEMES = {
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The bootstrap admin key, or a key with the admin scope.",
    },
    "BearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "The same key as ``Authorization: Bearer <key>``.",
    },
}
#: One tag per resource; an operation takes the tag of the last resource in its path.
TAGS = {
    "organizations": "Customers of the API: their plan, limits and whether they may call it.",
    "keys": "An organization's API keys: created, listed, changed, rotated and revoked.",
    "usage": "What an organization's keys used, by day, endpoint and status.",
}
#: Statuses every admin operation can answer, whatever it does: a key in the query string (400),
#: no or a bad key (401), a key without the admin scope (403), the caller's rate limit or too
#: many failed attempts (429), the database or rate-limit storage down (503).
COMMON_ERRORS = (400, 401, 403, 429, 503)
#: What an operation that reads a body can answer too: a body over ``MAX_CONTENT_LENGTH`` (413).
BODY_ERRORS = (413,)
#: Shared enums: one component each, so a generated client gets one type, not one per field.
SHARED_ENUMS = {"Level": list(LEVELS), "Environment": list(ENVIRONMENTS)}
PROJECT_URL = "https://flask-apikeys.readthedocs.io/"
#: OpenAPI 3.0's way to say "null and nothing else" (it has no ``null`` type).
NULL_ONLY = {"type": "string", "nullable": True, "enum": [None]}


def schema_name(resolver_input: type[Schema] | Schema) -> str:
    """``OrganizationCreateSchema`` → ``OrganizationCreate``; pages keep their given name."""
    schema_class = resolver_input if isinstance(resolver_input, type) else type(resolver_input)
    name = schema_class.__name__
    return name[: -len("Schema")] if name.endswith("Schema") and name != "Schema" else name


def build_openapi(server_url: str, *, plans: Iterable[str] = ()) -> dict[str, Any]:
    """The whole document, for the admin API served at ``server_url``.

    :param server_url: where the API is mounted, the app's own mount path (``SCRIPT_NAME``)
        included, e.g. ``/internal/admin`` under a ``DispatcherMiddleware``.
    :param plans: the plan names the app knows, the only values ``plan`` accepts.
    """
    spec = APISpec(
        title="flask-apikeys admin API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin(schema_name_resolver=schema_name)],
        info={
            "description": (
                "Organizations, API keys and usage. Send the bootstrap admin key, or a key with "
                "the admin scope (its own organization only), in X-API-Key or as a Bearer token. "
                "Every error is an RFC 9457 problem document (application/problem+json)."
            ),
            "contact": {"name": "The flask-apikeys developers", "url": PROJECT_URL},
            "license": {
                "name": "BSD-3-Clause",
                "url": "https://opensource.org/license/bsd-3-clause",
            },
        },
        servers=[{"url": server_url or "/"}],
        security=[{"ApiKeyHeader": []}, {"BearerKey": []}],
        tags=[{"name": name, "description": text} for name, text in TAGS.items()],
    )
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    spec.components.schema("Problem", schema=ProblemSchema)
    for status in sorted({status for op in OPERATIONS for status in error_statuses(op)}):
        spec.components.response(_response_name(status), _problem_response(status))
    by_path: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        by_path.setdefault(operation.openapi_path, {})[operation.method.lower()] = describe(
            operation
        )
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations, parameters=path_parameters(path))
    document = spec.to_dict()
    _share_enums(document["components"]["schemas"], plans=sorted(plans))
    return document


def path_parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": "An id (UUID)" + (" or the slug" if name == "org_id" else ""),
            "schema": {"type": "string"},
        }
        for name in names
    ]


def resource_of(openapi_path: str) -> str:
    """The tag of a path: its last segment that names a resource (``/…/keys/{key_id}`` → keys)."""
    return [part for part in openapi_path.split("/") if part in TAGS][-1]


def error_statuses(operation: Operation) -> set[int]:
    """Every error status ``operation`` can answer: its own, the common ones, a body's."""
    return {*operation.errors, *COMMON_ERRORS, *(BODY_ERRORS if operation.body else ())}


def describe(operation: Operation) -> dict[str, Any]:
    """One operation object; apispec turns the schema classes into ``$ref``s."""
    described: dict[str, Any] = {
        "operationId": operation.endpoint,
        "summary": operation.summary,
        "description": inspect.getdoc(operation.view) or operation.summary,
        "tags": [resource_of(operation.openapi_path)],
        "responses": {
            str(operation.status): {
                "description": HTTPStatus(operation.status).phrase,
                "content": {"application/json": {"schema": operation.response}},
                **_success_extras(operation),
            }
        },
    }
    if operation.query is not None:
        described["parameters"] = [{"in": "query", "schema": operation.query}]
    if operation.body is not None:
        described["requestBody"] = {
            "required": not _all_optional(operation.body),
            "content": {"application/json": {"schema": operation.body}},
        }
    for status in sorted(error_statuses(operation)):
        described["responses"][str(status)] = {
            "$ref": f"#/components/responses/{_response_name(status)}"
        }
    return described


def _success_extras(operation: Operation) -> dict[str, Any]:
    """``Location`` and the links to what was just created (for clients and stateful tests)."""
    if operation.status != 201:
        return {}
    links = _links_from(operation)
    extras: dict[str, Any] = {
        "headers": {
            "Location": {"description": "The URL of the new record.", "schema": {"type": "string"}}
        }
    }
    if links:
        extras["links"] = links
    return extras


def _links_from(created: Operation) -> dict[str, Any]:
    """Every operation on the created record, its path parameters taken from the response body."""
    is_key = resource_of(created.openapi_path) == "keys"
    body_of = {"org_id": "organization_id" if is_key else "id", "key_id": "id"}
    links = {}
    for target in OPERATIONS:
        parameters = _parameter_names(target.openapi_path)
        if not parameters or (is_key and "key_id" not in parameters):
            continue
        if not is_key and "key_id" in parameters:
            continue
        links[target.endpoint] = {
            "operationId": target.endpoint,
            "parameters": {name: f"$response.body#/{body_of[name]}" for name in parameters},
        }
    return links


def _parameter_names(openapi_path: str) -> Sequence[str]:
    return [part[1:-1] for part in openapi_path.split("/") if part.startswith("{")]


def _response_name(status: int) -> str:
    """``429`` → ``TooManyRequests``: the name of the shared response of a status."""
    return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": f"{HTTPStatus(status).phrase}: a problem document saying why.",
        "content": {PROBLEM_CONTENT_TYPE: {"schema": "Problem"}},
    }
    header = {
        401: ("WWW-Authenticate", "The Bearer challenge (RFC 6750)."),
        429: ("Retry-After", "Seconds to wait before the refused limit has room again."),
    }.get(status)
    if header is not None:
        name, description = header
        schema = {"type": "integer", "minimum": 1} if status == 429 else {"type": "string"}
        response["headers"] = {name: {"description": description, "schema": schema}}
    return response


def _share_enums(schemas: dict[str, Any], *, plans: list[str]) -> None:
    """Point every property with a shared enum at its component; list the known plans."""
    for name, enum_values in SHARED_ENUMS.items():
        schemas[name] = {
            "type": "string",
            "enum": enum_values,
            "description": f"A key's {name.lower()}.",
        }
    if plans:
        schemas["Plan"] = {"type": "string", "enum": plans, "description": "A configured plan."}
    shared = {tuple(values): name for name, values in SHARED_ENUMS.items()}
    for schema_name_, schema in list(schemas.items()):
        if schema_name_ in SHARED_ENUMS or schema_name_ == "Plan":
            continue
        for field_name, field in schema.get("properties", {}).items():
            listed = tuple(value for value in field.get("enum", ()) if value is not None)
            component = shared.get(listed)
            is_input = schema_name_.endswith(("Create", "Update"))
            if component is None and plans and field_name == "plan" and is_input:
                component = "Plan"
            if component is None:
                continue
            reference: dict[str, Any] = {"$ref": f"#/components/schemas/{component}"}
            if field.get("nullable"):
                # The component or null. Not ``nullable`` beside ``allOf``: in OpenAPI 3.0 that
                # does not admit null into the referenced enum, and generated clients (such as
                # openapi-python-client's) then refuse a ``null`` they were sent.
                reference = {"anyOf": [reference, NULL_ONLY]}
            schema["properties"][field_name] = reference


def _all_optional(schema: type[Schema]) -> bool:
    return not any(field.required for field in schema().fields.values())
