"""Bad input to the admin API, the token endpoint and the Python API is a 4xx that writes
nothing: never a 500, never a 503 that claims an outage (issue 17, item 5)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import fields, validate

from flask_apikeys import APIKeys
from flask_apikeys.errors import InvalidInput, OrganizationNotFound
from flask_apikeys.models import APIKey, AuditRecord, Organization

ADMIN_KEY = "bootstrap-" + "b" * 32
ADMIN = {"X-API-Key": ADMIN_KEY}
TOKEN_PATH = "/auth/token"
SECRET = "a-jwt-secret-of-at-least-32-characters!"
DEEP_JSON = '{"name": ' + "[" * 1000 + "]" * 1000 + "}"
DEEP_OBJECT = '{"metadata": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {
        "APIKEYS_ADMIN_KEY": ADMIN_KEY,
        "APIKEYS_USAGE_MODE": "sync",
        "APIKEYS_JWT_ENABLED": True,
        "APIKEYS_JWT_SECRET": SECRET,
    }


@dataclass
class Target:
    """An organization, one of its keys (its id and secret) to act on."""

    org_id: str
    key_id: str
    key: str


@pytest.fixture
def target(app: Flask, apikeys: APIKeys) -> Target:
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        created = apikeys.create_key(organization, "target", scopes=["*"])
        return Target(str(organization.id), str(created.api_key.id), created.key)


def stored_state(app: Flask) -> tuple[Any, ...]:
    """What a refused call must leave as it was: every organization, key and audit record."""
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        organizations = session.execute(
            sa.select(
                Organization.id,
                Organization.name,
                Organization.email,
                Organization.plan,
                Organization.is_active,
                Organization.monthly_request_limit,
                Organization.rate_limit_per_minute,
                Organization.max_api_keys,
            ).order_by(Organization.id)
        ).all()
        keys = session.execute(
            sa.select(
                APIKey.id,
                APIKey.name,
                APIKey.description,
                APIKey.scopes,
                APIKey.roles,
                APIKey.level,
                APIKey.custom_rate_limit,
                APIKey.key_metadata,
                APIKey.allowed_networks,
                APIKey.expires_at,
                APIKey.revoked_at,
                APIKey.replaced_by_id,
            ).order_by(APIKey.id)
        ).all()
        audits = session.scalar(sa.select(sa.func.count()).select_from(AuditRecord))
        session.rollback()
        return (tuple(organizations), tuple(keys), audits)


def write_routes(target: Target) -> list[tuple[str, str]]:
    """Every admin route that takes a body: (method, path)."""
    org = f"/admin/organizations/{target.org_id}"
    key = f"{org}/keys/{target.key_id}"
    return [
        ("POST", "/admin/organizations"),
        ("PUT", org),
        ("POST", f"{org}/keys"),
        ("PATCH", key),
        ("DELETE", key),
        ("POST", f"{key}/rotate"),
    ]


def assert_refused(response: Any, statuses: tuple[int, ...] = (400, 422)) -> None:
    assert response.status_code in statuses, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("body", [DEEP_JSON, DEEP_OBJECT], ids=["deep-list", "deep-object"])
def test_deeply_nested_json_is_a_400_on_every_write_route_and_the_token_endpoint(
    app: Flask, client: FlaskClient, target: Target, body: str
) -> None:
    before = stored_state(app)
    for method, path in write_routes(target):
        response = client.open(
            path, method=method, data=body, headers=ADMIN, content_type="application/json"
        )
        assert_refused(response)
    response = client.post(
        TOKEN_PATH, data=body, headers={"X-API-Key": target.key}, content_type="application/json"
    )
    assert_refused(response)
    assert stored_state(app) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "lone \ud800 surrogate"),
        ("name", "nul \x00 inside"),
        ("description", "\udfff"),
        ("metadata", {"k": "v\x00"}),
        ("metadata", {"k\ud800": 1}),
        ("rate_limit", "10/minute\x00"),
        ("scopes", ["a:read\x00"]),
    ],
)
def test_unstorable_text_is_a_422_on_create_and_update_never_a_500_or_503(
    app: Flask, client: FlaskClient, target: Target, field: str, value: Any
) -> None:
    before = stored_state(app)
    org = f"/admin/organizations/{target.org_id}"
    attempts = [
        ("POST", f"{org}/keys", {"name": "k", field: value}),
        ("PATCH", f"{org}/keys/{target.key_id}", {field: value}),
    ]
    if field == "name":
        attempts += [
            ("POST", "/admin/organizations", {"name": value, "email": "x@y.io"}),
            ("PUT", org, {"name": value}),
        ]
    for method, path, body in attempts:
        response = client.open(path, method=method, json=body, headers=ADMIN)
        assert_refused(response, (422,))
    assert stored_state(app) == before


@pytest.mark.parametrize("reason", ["nul\x00", "\ud800"])
def test_an_unstorable_revocation_reason_is_a_422(
    app: Flask, client: FlaskClient, target: Target, reason: str
) -> None:
    before = stored_state(app)
    path = f"/admin/organizations/{target.org_id}/keys/{target.key_id}"
    assert_refused(client.delete(path, json={"reason": reason}, headers=ADMIN), (422,))
    assert stored_state(app) == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(
    app: Flask, client: FlaskClient, target: Target, constant: str
) -> None:
    before = stored_state(app)
    org = f"/admin/organizations/{target.org_id}"
    for path, body in [
        (f"{org}/keys", '{"name": "k", "metadata": {"x": ' + constant + "}}"),
        (f"{org}/keys/{target.key_id}/rotate", '{"overlap_hours": ' + constant + "}"),
    ]:
        response = client.post(path, data=body, headers=ADMIN, content_type="application/json")
        assert_refused(response)
    assert stored_state(app) == before


@pytest.mark.parametrize("reference", ["a%00b", "%ED%A0%80", "x" * 300, "%00"])
def test_an_organization_reference_no_slug_can_be_is_a_404_not_a_503(
    client: FlaskClient, target: Target, reference: str
) -> None:
    response = client.get(f"/admin/organizations/{reference}", headers=ADMIN)
    assert response.status_code == 404
    response = client.get(f"/admin/organizations/{reference}/keys", headers=ADMIN)
    assert response.status_code == 404


def test_a_query_with_a_nul_is_a_422(client: FlaskClient, target: Target) -> None:
    response = client.get("/admin/organizations?limit=5%00", headers=ADMIN)
    assert_refused(response, (422,))
    response = client.get(
        f"/admin/organizations/{target.org_id}/usage?start=2026-01-01%00&end=2026-02-01",
        headers=ADMIN,
    )
    assert_refused(response, (422,))


def test_rotating_a_key_that_expires_in_year_9999_works(
    app: Flask, client: FlaskClient, target: Target
) -> None:
    far = datetime(9999, 12, 31, tzinfo=UTC)
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(sa.update(APIKey).values(expires_at=far))  # as stored before the bound
        session.commit()
    path = f"/admin/organizations/{target.org_id}/keys/{target.key_id}/rotate"
    response = client.post(path, json={"overlap_hours": 2160}, headers=ADMIN)
    assert response.status_code == 201, response.get_data(as_text=True)
    expires = datetime.fromisoformat(response.get_json()["expires_at"])
    assert expires <= datetime.now(UTC) + timedelta(days=3651)


def test_an_expiry_in_year_9999_is_refused_at_creation(
    app: Flask, client: FlaskClient, target: Target
) -> None:
    before = stored_state(app)
    response = client.post(
        f"/admin/organizations/{target.org_id}/keys",
        json={"name": "forever", "expires_at": "9999-12-31T00:00:00+00:00"},
        headers=ADMIN,
    )
    assert_refused(response, (422,))
    assert stored_state(app) == before


# -- the Python API (and so the CLI) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "arguments"),
    [
        ("create_organization", {"name": "n\x00", "email": "a@b.io"}),
        ("create_organization", {"name": "\ud800", "email": "a@b.io"}),
        ("create_organization", {"name": "n", "email": "a@b.io", "monthly_request_limit": 2**40}),
        ("create_organization", {"name": "n", "email": "a@b.io", "max_api_keys": 2**70}),
        ("create_organization", {"name": "n", "email": "a@b.io", "plan": ["pro"]}),
        ("create_key", {"name": "k\x00"}),
        ("create_key", {"name": "k", "description": "d\x00"}),
        ("create_key", {"name": "k", "metadata": {"x": float("nan")}}),
        ("create_key", {"name": "k", "metadata": {"x": "\x00"}}),
        ("create_key", {"name": "k", "metadata": {"x": 2**64}}),
        ("create_key", {"name": "k", "rate_limit": "10/minute;" * 20}),
        ("create_key", {"name": "k", "expires_at": datetime(9999, 12, 31, tzinfo=UTC)}),
        ("create_key", {"name": "k", "roles": [{"not": "a name"}]}),
        ("create_key", {"name": "k", "scopes": 5}),
        ("update_key", {"name": "\ud83d"}),
        ("revoke_key", {"reason": "r\x00"}),
        ("revoke_key", {"revoked_by": "\udc00"}),
        ("rotate_key", {"overlap_hours": float("nan")}),
        ("list_keys", {"offset": 2**63}),
    ],
)
def test_the_python_api_refuses_unstorable_values_with_invalid_input(
    app: Flask, apikeys: APIKeys, target: Target, call: str, arguments: dict[str, Any]
) -> None:
    before = stored_state(app)
    with app.app_context():
        positional: tuple[Any, ...] = ()
        if call in ("create_key", "list_keys"):
            positional = (target.org_id,)
        elif call in ("update_key", "revoke_key", "rotate_key"):
            positional = (target.key_id,)
        with pytest.raises(InvalidInput):
            getattr(apikeys, call)(*positional, **arguments)
    assert stored_state(app) == before


def test_looking_up_an_organization_by_text_no_slug_can_be_is_not_found(
    app: Flask, apikeys: APIKeys
) -> None:
    with app.app_context(), pytest.raises(OrganizationNotFound):
        apikeys.get_organization("acme\x00")


# -- property: arbitrary input never makes a 5xx and a refusal writes nothing ----------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["\x00", "\ud800", "x" * 400, "9999-12-31T00:00:00+00:00", "10/minute"])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = [
    "name",
    "email",
    "plan",
    "slug",
    "is_active",
    "monthly_request_limit",
    "rate_limit_per_minute",
    "max_api_keys",
    "description",
    "scopes",
    "roles",
    "level",
    "rate_limit",
    "metadata",
    "allowed_networks",
    "environment",
    "expires_in_days",
    "expires_at",
    "reason",
    "overlap_hours",
    "scope",
]
NASTY = st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "x\udfffy", "x" * 400, "9999-12-31T00:00:00+00:00"]
) | st.sampled_from([float("nan"), float("inf"), 2**64, -(2**63) - 1, {"deep": [[[[[[]]]]]]}])
#: A body that would be accepted but for one field: what reaches the service and the database.
NEARLY_VALID = st.builds(
    lambda field, value: {"name": "n", "email": "a@b.io", field: value},
    st.sampled_from(FIELD_NAMES),
    NASTY | JSON_VALUES,
)
DEEP = st.integers(min_value=100, max_value=3000).map(
    lambda depth: '{"metadata": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
)
BODIES = st.one_of(
    NEARLY_VALID.map(json.dumps).map(str.encode),
    st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), JSON_VALUES, max_size=5)
    .map(json.dumps)
    .map(str.encode),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    DEEP.map(str.encode),
    st.binary(max_size=64),
)
QUERY_NAMES = ["limit", "offset", "include_revoked", "start", "end", "key_id"]
QUERIES = st.dictionaries(
    st.sampled_from(QUERY_NAMES) | st.text(max_size=6), st.text(max_size=20), max_size=4
)
PATH_TEXT = st.text(max_size=40).map(
    lambda text: quote(text.encode("utf-8", "surrogatepass"), safe="")
)
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@HYPOTHESIS
@given(
    operation=st.integers(min_value=0, max_value=6),
    body=BODIES,
    as_json=st.booleans(),
)
def test_no_admin_write_or_token_request_is_a_5xx_and_a_refusal_writes_nothing(
    app: Flask, client: FlaskClient, target: Target, operation: int, body: bytes, as_json: bool
) -> None:
    routes = write_routes(target) + [("POST", TOKEN_PATH)]
    method, path = routes[operation]
    headers = {"X-API-Key": target.key} if path == TOKEN_PATH else ADMIN
    before = stored_state(app)
    response = client.open(
        path,
        method=method,
        data=body,
        headers=headers,
        content_type="application/json" if as_json else "text/plain",
    )
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json"
        after = stored_state(app)
        if response.status_code in (401, 403, 429):
            # An earlier example revoked the key or switched its organization off: the refused
            # attempt is audited, by design (and so is the failed-authentication limit).
            after, before = after[:2], before[:2]
        assert after == before, (response.status_code, response.get_data(as_text=True))


@HYPOTHESIS
@given(
    operation=st.integers(min_value=0, max_value=3),
    query=QUERIES,
    reference=PATH_TEXT,
)
def test_no_admin_read_is_a_5xx_whatever_its_query_or_path(
    app: Flask,
    client: FlaskClient,
    target: Target,
    operation: int,
    query: dict[str, str],
    reference: str,
) -> None:
    org = f"/admin/organizations/{target.org_id}"
    paths = [
        "/admin/organizations",
        f"{org}/keys",
        f"{org}/usage",
        f"/admin/organizations/{reference}/keys/{reference}",
    ]
    response = client.get(paths[operation], query_string=query, headers=ADMIN)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400 and operation < 3:  # (a path with "/" may match no route)
        assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("month", ["9999-12", "0000-01"])
def test_a_month_outside_the_calendar_is_invalid_input(
    app: Flask, apikeys: APIKeys, target: Target, month: str
) -> None:
    with app.app_context(), pytest.raises(InvalidInput):
        apikeys.monthly_usage(target.org_id, month)


FORM_TEXT = st.text(max_size=40) | st.sampled_from(
    ["\x00", "a\x00b", "x" * 300, "client_credentials"]
)


@HYPOTHESIS
@given(
    path=st.sampled_from([TOKEN_PATH, "/auth/introspect", "/auth/revoke"]),
    form=st.dictionaries(
        st.sampled_from(["grant_type", "client_id", "client_secret", "scope", "token"]),
        FORM_TEXT,
        max_size=4,
    ),
    basic=st.none() | st.tuples(FORM_TEXT, FORM_TEXT),
)
def test_no_oauth_request_is_a_5xx_whatever_its_form(
    app: Flask,
    client: FlaskClient,
    target: Target,
    path: str,
    form: dict[str, str],
    basic: tuple[str, str] | None,
) -> None:
    headers = {}
    if basic is not None:
        credentials = f"{quote(basic[0])}:{quote(basic[1])}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    before = stored_state(app)
    response = client.post(path, data=form, headers=headers)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert stored_state(app)[:2] == before[:2]  # refused attempts are audited, by design


def test_deeply_nested_json_at_the_token_endpoint_is_not_taken_for_oauth(
    client: FlaskClient, target: Target
) -> None:
    response = client.post(
        TOKEN_PATH,
        data=DEEP_OBJECT,
        headers={"X-API-Key": target.key},
        content_type="application/json",
    )
    assert_refused(response)


# -- one rule, one place: the service's answer, whichever way the value comes in --------------

SERVICE_CHECKED = [
    ("create_organization", {"name": "n" * 201, "email": "a@b.io"}, "name"),
    ("create_organization", {"name": "n", "email": "a@b.io", "max_api_keys": -1}, "max_api_keys"),
    ("create_organization", {"name": "n", "email": "a@b.io", "slug": "S" * 101}, "slug"),
    ("create_key", {"name": "k", "description": "d" * 2001}, "description"),
    ("create_key", {"name": "k", "rate_limit": "1/minute;" * 20}, "rate_limit"),
    ("create_key", {"name": "k", "expires_in_days": 0}, "expires_in_days"),
    ("create_key", {"name": "k", "scopes": ["no scope"]}, "scopes"),
    ("create_key", {"name": "k", "allowed_networks": ["10.0.0.1"] * 101}, "allowed_networks"),
    (
        "create_key",
        {"name": "k", "expires_in_days": 3, "expires_at": "2100-01-01T00:00:00+00:00"},
        "expires_at",
    ),
    ("rotate_key", {"overlap_hours": 2161}, "overlap_hours"),
]


@pytest.mark.parametrize(("call", "body", "field"), SERVICE_CHECKED)
def test_the_admin_api_answers_with_the_services_own_message(
    app: Flask,
    client: FlaskClient,
    apikeys: APIKeys,
    target: Target,
    call: str,
    body: dict[str, Any],
    field: str,
) -> None:
    """The schemas check types only: a rule's message is the service's, as the CLI shows it."""
    org = f"/admin/organizations/{target.org_id}"
    method, path = {
        "create_organization": ("POST", "/admin/organizations"),
        "create_key": ("POST", f"{org}/keys"),
        "rotate_key": ("POST", f"{org}/keys/{target.key_id}/rotate"),
    }[call]
    before = stored_state(app)
    response = client.open(path, method=method, json=body, headers=ADMIN)
    assert_refused(response, (422,))
    arguments = dict(body)
    if isinstance(arguments.get("expires_at"), str):
        arguments["expires_at"] = datetime.fromisoformat(arguments["expires_at"])
    positional = {"create_key": (target.org_id,), "rotate_key": (target.key_id,)}.get(call, ())
    with app.app_context(), pytest.raises(InvalidInput) as raised:
        getattr(apikeys, call)(*positional, **arguments)
    assert response.json["errors"][field] == raised.value.errors[field]
    assert stored_state(app) == before


def test_the_input_schemas_declare_shape_and_types_only() -> None:
    from flask_apikeys.admin import schemas

    for schema in (
        schemas.OrganizationCreateSchema,
        schemas.OrganizationUpdateSchema,
        schemas.KeyCreateSchema,
        schemas.KeyUpdateSchema,
        schemas.RevokeSchema,
        schemas.RotateSchema,
    ):
        for name, field in schema().fields.items():
            inner = getattr(field, "inner", None)
            assert not getattr(inner, "validators", ()), (schema, name)
            if isinstance(field, fields.List):  # how long a request may be is shape
                assert all(isinstance(bound, validate.Length) for bound in field.validators)
            else:
                assert not field.validators, (schema, name)
