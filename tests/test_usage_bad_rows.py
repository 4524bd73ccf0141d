"""One bad request never stops recording: values are made storable when captured, and a flush
the database refuses for some rows drops those rows alone (issue 17, item 4)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys, record_cost
from flask_apikeys.models import APIKey, APIKeyUsage, AuditRecord
from flask_apikeys.storable import (
    MAX_JSON_DEPTH,
    json_problem,
    storable_json,
    storable_text,
    unstorable_reason,
)
from flask_apikeys.usage.rows import UNMATCHED_ENDPOINT

BAD_USER_AGENTS = ["agent\x00with-nul", "x" * 5000, "caf\xe9 \xff"]


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def usage_rows(app: Flask) -> list[APIKeyUsage]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return list(session.scalars(sa.select(APIKeyUsage).order_by(APIKeyUsage.id)))


def audit_rows(app: Flask) -> list[AuditRecord]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return list(session.scalars(sa.select(AuditRecord).order_by(AuditRecord.id)))


def total_requests(app: Flask, apikeys: APIKeys, key: str) -> int:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        key_id = apikeys.verify_key(key).id
        return int(session.scalar(sa.select(APIKey.total_requests).where(APIKey.id == key_id)))


def test_a_nul_in_the_path_does_not_stop_the_workers_recording(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key = make_key()
    client = app.test_client()
    assert client.get("/v1/presentations%00", headers={"X-API-Key": key}).status_code == 404
    assert client.get("/v1/presentations", headers={"X-API-Key": key}).status_code == 200
    bad_key = key[:-3] + "\x00zz"
    assert client.get("/v1/presentations%00", headers={"X-API-Key": bad_key}).status_code == 401

    apikeys.flush_usage()
    assert client.get("/v1/presentations", headers={"X-API-Key": key}).status_code == 200
    apikeys.flush_usage()

    rows = usage_rows(app)
    assert [row.endpoint for row in rows] == [
        UNMATCHED_ENDPOINT,
        "/v1/presentations",
        "/v1/presentations",
    ]
    assert total_requests(app, apikeys, key) == 3
    refused = [record for record in audit_rows(app) if record.event == "auth.refused"]
    assert len(refused) == 1
    assert "\x00" not in refused[0].details["path"]


def test_an_unmatched_route_is_recorded_as_unmatched_not_as_its_path(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key = make_key()
    client = app.test_client()
    for path in ("/nope", "/nope/again", "/" + "a" * 1000):
        assert client.get(path, headers={"X-API-Key": key}).status_code == 404
    apikeys.flush_usage()
    assert {row.endpoint for row in usage_rows(app)} == {UNMATCHED_ENDPOINT}


@pytest.mark.parametrize("user_agent", BAD_USER_AGENTS)
def test_in_sync_mode_a_request_with_unstorable_values_is_never_a_500(
    make_app: Callable[..., Flask], make_key: Callable[..., str], user_agent: str
) -> None:
    app = make_app(APIKEYS_USAGE_MODE="sync")
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Sync", email="s@s.io", plan="pro")
        key = apikeys.create_key(organization, "sync", scopes=["*"]).key
    client = app.test_client()
    headers = {"X-API-Key": key, "User-Agent": user_agent}
    assert client.get("/v1/presentations%00", headers=headers).status_code == 404
    for _ in range(3):
        assert client.get("/v1/presentations", headers={"X-API-Key": key}).status_code == 200
    rows = usage_rows(app)
    assert len(rows) == 4
    assert rows[0].user_agent is not None and "\x00" not in rows[0].user_agent
    assert len(rows[0].user_agent) <= 300
    assert total_requests(app, apikeys, key) == 4


def test_forwarded_addresses_with_a_nul_are_stored_without_it(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(APIKEYS_USAGE_MODE="sync", APIKEYS_TRUSTED_PROXIES=1)
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Proxy", email="p@p.io", plan="pro")
        key = apikeys.create_key(organization, "proxied", scopes=["*"]).key
    client = app.test_client()
    headers = {"X-API-Key": key, "X-Forwarded-For": "10.0.0.1\x00" + "9" * 80}
    assert client.get("/v1/presentations", headers=headers).status_code == 200
    (row,) = usage_rows(app)
    assert row.ip_address is not None
    assert "\x00" not in row.ip_address and len(row.ip_address) <= 45


@pytest.mark.parametrize(
    ("tokens", "cost"),
    [(2**40, 1.0), (5, float("nan")), (5, float("inf")), (5, 1e12), (-(2**40), 0.5)],
)
def test_costs_the_columns_cannot_hold_are_left_out_not_a_failed_request(
    app: Flask,
    apikeys: APIKeys,
    make_key: Callable[..., str],
    tokens: int,
    cost: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def costly() -> dict[str, str]:
        record_cost(tokens=tokens, cost_usd=cost)
        return {"done": "yes"}

    app.add_url_rule("/v1/costly", "costly", costly)
    key = make_key()
    with caplog.at_level(logging.WARNING, logger="flask_apikeys.usage"):
        response = app.test_client().get("/v1/costly", headers={"X-API-Key": key})
        assert response.status_code == 200
        assert apikeys.flush_usage() == 1
    (row,) = usage_rows(app)
    assert (row.tokens_used is None) != (-(2**31) < tokens < 2**31)
    assert (row.cost_usd is None) != (abs(cost) < 1e6)
    assert "out of range" in caplog.text


def queued_row(key_id: uuid.UUID, organization_id: uuid.UUID, **changes: Any) -> tuple[Any, ...]:
    """A usage row as the writer queues it (the order of ``usage.insert.USAGE_FIELDS``)."""
    values: dict[str, Any] = {
        "endpoint": "/v1/presentations",
        "method": "GET",
        "status_code": 200,
        "tokens_used": None,
        "user_agent": "test",
        **changes,
    }
    return (
        key_id,
        organization_id,
        time.time(),
        values["endpoint"],
        values["method"],
        values["status_code"],
        1.5,
        values["tokens_used"],
        None,
        "203.0.113.9",
        values["user_agent"],
        None,
        None,
    )


def test_a_flush_drops_only_the_rows_the_database_refuses_and_keeps_the_rest(
    app: Flask,
    apikeys: APIKeys,
    make_key: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = make_key()
    with app.app_context():
        verified = apikeys.verify_key(key)
    writer = app.extensions["apikeys"].writer
    bad_positions = {3, 50, 99}
    for position in range(100):
        # Past what a database integer holds (and past what the sqlite3 module can bind):
        # refused on every backend, as a value that slipped past capture would be.
        tokens = 2**70 if position in bad_positions else position
        writer.add_usage(queued_row(verified.id, verified.organization.id, tokens_used=tokens))
    with caplog.at_level(logging.WARNING, logger="flask_apikeys.usage"):
        assert writer.flush() == 97
    assert "dropped 3 usage rows" in caplog.text
    assert key not in caplog.text
    stored = sorted(row.tokens_used for row in usage_rows(app))
    assert stored == [position for position in range(100) if position not in bad_positions]
    assert total_requests(app, apikeys, key) == 97
    assert writer.flush() == 0  # nothing left behind to retry forever


def test_a_row_with_a_nul_that_slipped_past_capture_is_dropped_alone_on_postgresql(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], backend_url: str
) -> None:
    with app.app_context():
        verified = apikeys.verify_key(make_key())
    writer = app.extensions["apikeys"].writer
    for position in range(10):
        agent = "nul\x00here" if position == 4 else f"agent {position}"
        writer.add_usage(queued_row(verified.id, verified.organization.id, user_agent=agent))
    # PostgreSQL refuses a NUL in text; SQLite stores it.
    expected = 9 if backend_url.startswith("postgresql") else 10
    assert writer.flush() == expected
    assert len(usage_rows(app)) == expected


def test_an_audit_record_the_database_refuses_is_dropped_alone(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    writer = app.extensions["apikeys"].writer
    good = {
        "event": "auth.refused",
        "actor": None,
        "organization_id": None,
        "api_key_id": None,
        "key_prefix": None,
        "key_hint": None,
        "ip_address": None,
        "details": {},
    }
    for position in range(7):
        # A lone surrogate has no UTF-8 form: every driver refuses it.
        agent = "lone \ud800" if position == 2 else f"agent {position}"
        writer.add_audit({**good, "created_at": _now(), "user_agent": agent})
    with caplog.at_level(logging.WARNING, logger="flask_apikeys.audit"):
        writer.flush()
    assert "dropped 1 audit records" in caplog.text
    agents = [record.user_agent for record in audit_rows(app)]
    assert agents == [f"agent {position}" for position in range(7) if position != 2]
    assert app.extensions["apikeys"].extension.verify_audit() is None


def _now() -> Any:
    from flask_apikeys.models import utcnow

    return utcnow()


def test_audit_records_built_from_request_data_are_storable(app: Flask) -> None:
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        apikeys.audit(
            "custom\x00event",
            actor="admin\x00" + "a" * 400,
            user_agent="\ud800" * 10,
            details={"nested": {"text": "a\x00b", "nan": float("nan")}, "k\x00": 1},
        )
    (record,) = audit_rows(app)
    assert "\x00" not in record.event and "\x00" not in (record.actor or "")
    assert len(record.actor or "") <= 320
    assert record.details == {"nested": {"text": "a\ufffdb", "nan": None}, "k\ufffd": 1}
    assert apikeys.verify_audit() is None


# -- the helpers themselves ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "width", "stored"),
    [
        ("plain", 300, "plain"),
        ("a\x00b", 300, "a\ufffdb"),
        ("lone \ud800 surrogate", 300, "lone \ufffd\ufffd\ufffd surrogate"),
        ("x" * 400, 300, "x" * 300),
        ("caf\xe9", 300, "caf\xe9"),
    ],
)
def test_storable_text_removes_what_databases_refuse(value: str, width: int, stored: str) -> None:
    assert storable_text(value, width) == stored
    assert stored.encode("utf-8")  # always encodable


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "value",
    [
        {"a": "b\x00"},
        {"a\x00": 1},
        {"a": ["\udc80"]},
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": 2**64},
        deep(MAX_JSON_DEPTH + 1),
        {"a": object()},
        {1: "integer key"},
    ],
)
def test_json_problem_names_every_kind_of_unstorable_json(value: Any) -> None:
    assert json_problem(value) is not None
    assert json_problem(storable_json(value)) is None


def test_json_problem_accepts_ordinary_json() -> None:
    assert json_problem({"customer": "c-1", "n": [1, 2.5, None, True], "d": deep(5)}) is None
    assert unstorable_reason("ordinary \xe9 text") is None
