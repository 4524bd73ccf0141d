"""The audit trail: what it records, that it never holds a key, and that tampering shows."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.models import AuditRecord

from .factory import tampered


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def records(app: Flask) -> list[AuditRecord]:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return list(session.scalars(sa.select(AuditRecord).order_by(AuditRecord.id)))


def execute(app: Flask, statement: Any) -> None:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(statement)
        session.commit()


def test_lifecycle_events_and_refused_attempts_are_recorded_with_who(
    app: Flask, apikeys: APIKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flask_apikeys.audit")
    with app.app_context():
        org = apikeys.create_organization(name="Acme", email="a@acme.io", actor="ops@acme.io")
        created = apikeys.create_key(org, "k", scopes=["*"], actor="ops@acme.io")
        apikeys.update_organization(org, plan="pro", actor="ops@acme.io")
        rotated = apikeys.rotate_key(created.api_key.id, overlap_hours=0, rotated_by="ci")
        apikeys.revoke_key(rotated.api_key.id, reason="done", revoked_by="ops@acme.io")
        apikeys.audit("admin.organizations.list", actor="admin-key", details={"count": 1})
    client = app.test_client()
    client.get("/v1/whoami", headers={"X-API-Key": rotated.key, "User-Agent": "evil/1"})
    client.get("/v1/whoami", headers={"X-API-Key": created.key})
    client.get("/v1/whoami", headers={"X-API-Key": "pk_live_garbage"})
    with app.app_context():
        apikeys.flush_usage()
    trail = records(app)
    assert [record.event for record in trail] == [
        "organization.created",
        "key.created",
        "organization.updated",
        "key.rotated",
        "key.revoked",
        "admin.organizations.list",
        "auth.refused",
        "auth.expired",
        "auth.refused",
    ]
    assert trail[2].details["changes"] == ["plan"] and trail[3].actor == "ci"
    revoked_attempt = trail[6]
    assert revoked_attempt.details["code"] == "revoked_api_key"
    assert (revoked_attempt.ip_address, revoked_attempt.user_agent) == ("127.0.0.1", "evil/1")
    assert revoked_attempt.key_prefix == rotated.key[:12]
    assert revoked_attempt.key_hint == rotated.key[-4:]
    assert trail[8].key_prefix is None  # a malformed guess has no prefix worth keeping
    everything = " ".join(str(vars(record)) for record in trail) + caplog.text
    assert created.key not in everything and rotated.key not in everything
    assert "organization.created" in caplog.text
    with app.app_context():
        assert apikeys.verify_audit() is None


@pytest.mark.parametrize("tampering", ["edit", "delete", "insert"])
def test_tampering_is_found_at_the_first_bad_record(
    app: Flask, apikeys: APIKeys, tampering: str
) -> None:
    with app.app_context():
        org = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        for number in range(4):
            apikeys.create_key(org, f"k{number}")
    trail = records(app)
    table = AuditRecord.__table__
    victim = trail[2]
    if tampering == "edit":
        execute(app, sa.update(table).where(table.c.id == victim.id).values(actor="someone else"))
        expected = victim.id
    elif tampering == "delete":
        execute(app, sa.delete(table).where(table.c.id == victim.id))
        expected = trail[3].id
    else:
        forged = {column.name: getattr(victim, column.name) for column in table.columns}
        forged.update(id=victim.id * 100, previous_hash="f" * 64)
        execute(app, sa.insert(table).values(**forged))
        expected = forged["id"]
    with app.app_context():
        broken = apikeys.verify_audit()
    assert broken is not None and broken.record_id == expected
    word = "changed" if tampering == "edit" else "deleted or inserted"
    assert word in str(broken)


def test_concurrent_writers_keep_one_unbroken_chain(app: Flask, apikeys: APIKeys) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            with app.app_context():
                for number in range(10):
                    apikeys.audit("test.event", actor=f"worker-{worker}", details={"n": number})
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    trail = records(app)
    assert len(trail) == 40
    assert len({record.previous_hash for record in trail}) == 40
    with app.app_context():
        assert apikeys.verify_audit() is None


def test_no_raw_key_anywhere_in_logs_stdout_or_stderr_across_a_whole_flow(
    app: Flask,
    apikeys: APIKeys,
    make_key: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    key = make_key(scopes=["presentations:read"])
    client = app.test_client()
    client.get("/v1/presentations", headers={"Authorization": f"Bearer {key}"})
    client.get(f"/v1/presentations?token={key}")
    client.post("/v1/presentations", headers={"X-API-Key": key})
    with app.app_context():
        key_id = apikeys.verify_key(key).id
        rotated = apikeys.rotate_key(key_id, overlap_hours=0)
        apikeys.revoke_key(rotated.api_key.id, reason="done")
        apikeys.flush_usage()
    for candidate in (key, rotated.key, tampered(key)):
        client.get("/v1/whoami", headers={"X-API-Key": candidate})
    # Even a careless app that logs a key, or raises with one in the message, leaks nothing.
    app.logger.warning("user pasted %s into a ticket", key)
    try:
        raise ValueError(f"bad key {rotated.key}")
    except ValueError:
        logging.getLogger("app").exception("failed")
    captured = capsys.readouterr()
    logs = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    for secret in (key, rotated.key):
        assert secret not in logs and secret not in captured.out and secret not in captured.err
    assert key[:12] + "…[masked]" in logs
