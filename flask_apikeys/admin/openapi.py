"""The admin API's OpenAPI 3 document, built from the route table and its marshmallow schemas."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from .schemas import ProblemSchema
from .views import OPERATIONS, Operation

PROBLEM_CONTENT_TYPE = "application/problem+json"
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer"},
}


def schema_name(resolver_input: type[Schema] | Schema) -> str:
    """``OrganizationCreateSchema`` → ``OrganizationCreate``; pages keep their given name."""
    schema_class = resolver_input if isinstance(resolver_input, type) else type(resolver_input)
    name = schema_class.__name__
    return name[: -len("Schema")] if name.endswith("Schema") and name != "Schema" else name


def build_openapi(url_prefix: str) -> dict[str, Any]:
    """The whole document, for the admin API mounted at ``url_prefix``."""
    from .. import __version__  # the package imports this module while it initialises

    spec = APISpec(
        title="flask-apikeys admin API",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin(schema_name_resolver=schema_name)],
        info={
            "description": (
                "Organizations, API keys and usage. Send the bootstrap admin key, or a key with "
                "the admin scope (its own organization only), in X-API-Key or as a Bearer token."
            )
        },
        servers=[{"url": url_prefix or "/"}],
        security=[{"ApiKeyHeader": []}, {"BearerKey": []}],
    )
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    spec.components.schema("Problem", schema=ProblemSchema)
    by_path: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        by_path.setdefault(operation.openapi_path, {})[operation.method.lower()] = describe(
            operation
        )
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations, parameters=path_parameters(path))
    return spec.to_dict()


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


def describe(operation: Operation) -> dict[str, Any]:
    """One operation object; apispec turns the schema classes into ``$ref``s."""
    described: dict[str, Any] = {
        "operationId": operation.endpoint,
        "summary": operation.summary,
        "tags": [operation.path.split("/")[1]],
        "responses": {
            str(operation.status): {
                "description": HTTPStatus(operation.status).phrase,
                "content": {"application/json": {"schema": operation.response}},
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
    for status in (*operation.errors, 503):
        described["responses"][str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": "Problem"}},
        }
    return described


def _all_optional(schema: type[Schema]) -> bool:
    return not any(field.required for field in schema().fields.values())
