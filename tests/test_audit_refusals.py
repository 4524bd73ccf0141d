"""Refused attempts in the audit trail: repeats of one attempt between two flushes are one
record carrying their exact count, so a client hammering a wrong key writes no row per request."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.keys import generate_key
from flask_apikeys.models import AuditRecord

from .factory import create_app, tampered


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


@pytest.fixture
def app_config() -> dict[str, Any]:
    # The writer's thread flushes only when the test says so.
    return {"APIKEYS_USAGE_FLUSH_INTERVAL": 3600, "APIKEYS_FAILED_AUTH_LIMIT": "10000/minute"}


def refusals(app: Flask) -> list[AuditRecord]:
    with app.app_context():
        app.extensions["apikeys"].extension.flush_usage()
        session = app.extensions["sqlalchemy"].session
        query = sa.select(AuditRecord).where(AuditRecord.event.like("auth.%"))
        return list(session.scalars(query.order_by(AuditRecord.id)))


@pytest.fixture
def key(app: Flask, apikeys: APIKeys) -> str:
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        return apikeys.create_key(organization, "k", scopes=["*"]).key


def test_repeated_refusals_of_one_attempt_are_one_record_with_their_count(
    app: Flask, apikeys: APIKeys, key: str
) -> None:
    client = app.test_client()
    wrong, other = generate_key("pk", "live"), tampered(key)  # well-formed, malformed
    for _ in range(25):
        assert client.get("/v1/whoami", headers={"X-API-Key": wrong}).status_code == 401
    for _ in range(3):
        client.get("/v1/whoami", headers={"X-API-Key": other})
    for _ in range(2):
        client.get(
            "/v1/whoami", headers={"X-API-Key": wrong}, environ_base={"REMOTE_ADDR": "10.0.0.9"}
        )
    trail = refusals(app)
    assert [
        (record.ip_address, record.key_prefix, record.details["count"]) for record in trail
    ] == [("127.0.0.1", wrong[:12], 25), ("127.0.0.1", None, 3), ("10.0.0.9", wrong[:12], 2)]
    first = trail[0]
    assert (first.event, first.details["code"]) == ("auth.refused", "invalid_api_key")
    assert (first.key_prefix, first.key_hint) == (wrong[:12], wrong[-4:])
    assert first.details["last_at"] >= first.created_at.isoformat()
    everything = " ".join(str(vars(record)) for record in trail)
    assert wrong not in everything and other not in everything
    # The next flush starts counting afresh, and the chain holds.
    client.get("/v1/whoami", headers={"X-API-Key": wrong})
    later = refusals(app)
    assert len(later) == 4 and later[-1].details["count"] == 1
    assert "last_at" not in later[-1].details
    with app.app_context():
        assert apikeys.verify_audit() is None


def test_refusals_at_once_and_flushes_between_them_count_each_refusal_exactly_once(
    app: Flask, apikeys: APIKeys, key: str
) -> None:
    wrong = tampered(key)
    threads_count, requests_each = 4, 40
    statuses: list[int] = []
    done = threading.Event()

    def hammer() -> None:
        client = app.test_client()
        for _ in range(requests_each):
            statuses.append(client.get("/v1/whoami", headers={"X-API-Key": wrong}).status_code)

    def flush_meanwhile() -> None:
        while not done.is_set():
            with app.app_context():
                apikeys.flush_usage()

    threads = [threading.Thread(target=hammer) for _ in range(threads_count)]
    flusher = threading.Thread(target=flush_meanwhile)
    flusher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    flusher.join()
    assert statuses == [401] * threads_count * requests_each
    trail = refusals(app)
    assert sum(record.details["count"] for record in trail) == threads_count * requests_each
    with app.app_context():
        assert apikeys.verify_audit() is None


def test_sync_usage_writes_each_refusal_at_once(
    database_url: str, create_tables: Callable[[Flask, APIKeys], None]
) -> None:
    app, _, apikeys = create_app(database_url, APIKEYS_USAGE_MODE="sync")
    create_tables(app, apikeys)
    with app.app_context():
        organization = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        wrong = tampered(apikeys.create_key(organization, "k").key)
    client = app.test_client()
    try:
        for _ in range(3):
            client.get("/v1/whoami", headers={"X-API-Key": wrong})
        with app.app_context():
            session = app.extensions["sqlalchemy"].session
            query = sa.select(AuditRecord).where(AuditRecord.event == "auth.refused")
            trail = list(session.scalars(query))
        assert [record.details["count"] for record in trail] == [1, 1, 1]
    finally:
        apikeys.close(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
