"""Usage rows, key counters and statistics, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.errors import InvalidInput
from flask_apikeys.models import APIKey, APIKeyUsage
from flask_apikeys.usage.insert import InsertPlan

from .factory import tampered


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def usage_rows(app: Flask) -> list[Any]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return list(session.scalars(sa.select(APIKeyUsage).order_by(APIKeyUsage.id)))


def key_record(app: Flask, apikeys: APIKeys, key: str) -> APIKey:
    with app.app_context():
        record = apikeys.get_key(apikeys.verify_key(key).id)
        apikeys.service.store.session.refresh(record)
        return record


def test_every_authenticated_request_is_recorded_with_its_outcome(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key = make_key(scopes=["presentations:read", "slides:*"])
    client = app.test_client()
    headers = {"X-API-Key": key, "User-Agent": "tests/1.0"}
    assert client.get("/v1/presentations", headers=headers).status_code == 200
    assert client.post("/v1/presentations", headers=headers).status_code == 403
    assert client.post("/v1/generate/slides", headers=headers).status_code == 200
    assert client.get("/v1/whoami", headers={"X-API-Key": tampered(key)}).status_code == 401
    assert client.get("/health").status_code == 200
    with app.app_context():
        assert usage_rows(app) == []  # buffered: nothing on the request path
        assert apikeys.flush_usage() == 3
    rows = usage_rows(app)
    assert [(r.method, r.endpoint, r.status_code) for r in rows] == [
        ("GET", "/v1/presentations", 200),
        ("POST", "/v1/presentations", 403),
        ("POST", "/v1/generate/slides", 200),
    ]
    refused, slides = rows[1], rows[2]
    assert (
        refused.error_code == "insufficient_scope"
        and "presentations:write" in refused.error_message
    )
    assert (slides.tokens_used, slides.cost_usd) == (1200, 0.0125)
    assert all(r.response_time_ms > 0 and r.user_agent == "tests/1.0" for r in rows)
    assert all(r.ip_address == "127.0.0.1" for r in rows)
    record = key_record(app, apikeys, key)
    assert record.total_requests == 3
    assert record.last_used_at is not None and record.last_request_at is not None
    assert datetime.now(UTC) - record.last_used_at < timedelta(minutes=1)


@pytest.mark.parametrize("method", ["native", "executemany"])
def test_a_bulk_flush_stores_every_row_exactly(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], method: str
) -> None:
    """150 rows: whole multi-row statements and the smaller ones after them on SQLite, COPY on
    PostgreSQL, and the ``executemany`` that other drivers get (named parameters on psycopg)."""
    with app.app_context():
        verified = apikeys.verify_key(make_key())
        engine = app.extensions["sqlalchemy"].engine
    plan = InsertPlan(engine.dialect)
    if method == "executemany":
        plan.method = "executemany"
    start = 1_750_000_000.25
    rows = [
        (
            verified.id,
            verified.organization.id,
            start + index * 1.000001,
            f"/v1/items/{index}",
            "GET",
            200 + index % 3,
            index / 7,
            index or None,
            None if index % 2 else index / 1000,
            "192.0.2.1",
            None if index % 5 else f"agent {index}",
            "message" if index % 3 else None,
            "code" if index % 3 else None,
        )
        for index in range(150)
    ]
    with engine.begin() as connection:
        plan.execute(connection, rows)
    stored = usage_rows(app)
    assert len(stored) == len(rows)
    for row, record in zip(rows, stored, strict=True):
        assert (record.api_key_id, record.organization_id) == row[:2]
        assert record.timestamp == datetime.fromtimestamp(row[2], UTC)
        assert (
            record.endpoint,
            record.method,
            record.status_code,
            record.response_time_ms,
            record.tokens_used,
            record.cost_usd,
            record.ip_address,
            record.user_agent,
            record.error_message,
            record.error_code,
        ) == pytest.approx(row[3:])


def test_synchronous_mode_writes_before_the_response(tmp_path: Any) -> None:
    from .factory import create_app

    app, db, apikeys = create_app(
        f"sqlite:///{tmp_path / 'sync.sqlite'}", APIKEYS_USAGE_MODE="sync"
    )
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io")
        key = apikeys.create_key(org, "k").key
    app.test_client().get("/v1/whoami", headers={"X-API-Key": key})
    assert len(usage_rows(app)) == 1
    with app.app_context():
        db.engine.dispose()


@pytest.mark.slow
def test_concurrent_requests_lose_no_row_and_no_increment(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    with app.app_context():
        roomy = apikeys.create_organization(
            name="Roomy", email="r@roomy.io", plan="enterprise", rate_limit_per_minute=10_000
        ).id
    keys = [make_key(org=roomy), make_key(org=roomy)]
    threads, per_thread = 8, 50
    failures: list[int] = []

    def hammer(index: int) -> None:
        client = app.test_client()
        for _ in range(per_thread):
            status = client.get("/v1/whoami", headers={"X-API-Key": keys[index % 2]}).status_code
            if status != 200:
                failures.append(status)

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    with app.app_context():
        apikeys.flush_usage()
    assert len(usage_rows(app)) == threads * per_thread
    totals = [key_record(app, apikeys, key).total_requests for key in keys]
    assert totals == [threads * per_thread // 2] * 2


def insert_usage(app: Flask, organization: Any, key_id: Any, rows: list[dict[str, Any]]) -> None:
    """Raw rows written behind the writer's back, then added to the rollups by the backfill."""
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        for row in rows:
            session.add(APIKeyUsage(api_key_id=key_id, organization_id=organization, **row))
        session.commit()
        app.extensions["apikeys"].service.retention.backfill_rollups()


def test_statistics_by_day_endpoint_status_and_latency(
    app: Flask, apikeys: APIKeys, organization: Any
) -> None:
    with app.app_context():
        first = apikeys.create_key(organization, "one").api_key.id
        second = apikeys.create_key(organization, "two").api_key.id
    jan = datetime(2026, 1, 10, 12, tzinfo=UTC)
    rows = [
        {
            "timestamp": jan + timedelta(days=day),
            "endpoint": endpoint,
            "method": "GET",
            "status_code": status,
            "response_time_ms": float(ms),
            "tokens_used": 10,
            "cost_usd": 0.5,
            "error_code": None if status < 400 else "x",
        }
        for day, endpoint, status, ms in [
            (0, "/a", 200, 10),
            (0, "/a", 200, 20),
            (0, "/b", 404, 30),
            (1, "/a", 500, 40),
            (1, "/a", 200, 50),
            (2, "/b", 200, 60),
            (2, "/b", 429, 70),
            (2, "/a", 200, 80),
            (2, "/a", 200, 90),
            (2, "/a", 201, 100),
        ]
    ]
    insert_usage(app, organization, first, rows)
    insert_usage(app, organization, second, [{**rows[0], "timestamp": jan - timedelta(days=30)}])
    with app.app_context():
        stats = apikeys.usage_stats(organization, start=date(2026, 1, 1), end=date(2026, 2, 1))
        assert stats["total_requests"] == 10 and stats["errors"] == 3
        assert (stats["tokens_used"], stats["cost_usd"]) == (100, 5.0)
        assert (stats["p50_ms"], stats["p95_ms"]) == (50.0, 100.0)
        assert stats["by_day"] == [
            {"date": "2026-01-10", "requests": 3, "errors": 1},
            {"date": "2026-01-11", "requests": 2, "errors": 1},
            {"date": "2026-01-12", "requests": 5, "errors": 1},
        ]
        assert stats["by_endpoint"][0] == {
            "method": "GET",
            "endpoint": "/a",
            "requests": 7,
            "errors": 1,
            "average_ms": 55.714,
        }
        assert stats["by_status_class"] == {"2xx": 7, "4xx": 2, "5xx": 1}
        assert stats["error_codes"] == {"x": 3}
        only_second = apikeys.usage_stats(
            organization, start=date(2025, 12, 1), end=date(2026, 2, 1), key=str(second)
        )
        assert only_second["total_requests"] == 1
        december = apikeys.monthly_usage(organization, "2025-12")
        assert december["month"] == "2025-12" and december["total_requests"] == 1
        empty = apikeys.monthly_usage(organization, "2024-02")
        assert (empty["total_requests"], empty["p50_ms"], empty["by_day"]) == (0, None, [])
        for bad in ("2026-13", "2026-1", "January"):
            with pytest.raises(InvalidInput):
                apikeys.monthly_usage(organization, bad)
        with pytest.raises(InvalidInput):
            apikeys.usage_stats(organization, start=date(2026, 2, 1), end=date(2026, 1, 1))


def test_a_row_whose_key_is_gone_is_dropped_without_blocking_the_others(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite does not enforce foreign keys unless asked: nothing is refused")
    doomed, kept = make_key(), make_key()
    client = app.test_client()
    for key in (doomed, kept, doomed):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        doomed_id = apikeys.verify_key(doomed).id
        session.execute(sa.delete(APIKey).where(APIKey.id == doomed_id))  # behind our back
        session.commit()
        assert apikeys.flush_usage() == 1
        assert apikeys.flush_usage() == 0  # nothing left to retry forever
    rows = usage_rows(app)
    assert [row.api_key_id for row in rows] == [apikeys_id(app, apikeys, kept)]


def apikeys_id(app: Flask, apikeys: APIKeys, key: str) -> Any:
    with app.app_context():
        return apikeys.verify_key(key).id


def test_a_forked_child_does_not_write_its_parents_queued_rows(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    """gunicorn --preload forks after the app loaded: queued rows must be written once."""
    import os

    key = make_key()
    client = app.test_client()
    writer = app.extensions["apikeys"].writer
    # The rows must still be queued when the process forks: no timed flush on a slow machine.
    writer.flush_interval = 3600
    for _ in range(3):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    assert len(writer._usage) == 3  # queued in the parent, not written yet
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child process
        os._exit(0 if len(writer._usage) == 0 and writer._thread is None else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the child starts with an empty queue
    with app.app_context():
        assert apikeys.flush_usage() == 3
    assert len(usage_rows(app)) == 3
