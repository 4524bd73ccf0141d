"""A database without the extension's tables (or with older ones) is not an outage: the
Python API, the CLI and the HTTP answer say to run the migrations, not to "try again"."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys.errors import BackendUnavailable
from flask_apikeys.keys import generate_key

from .factory import create_app

SET_UP_HINT = "flask db upgrade"


@pytest.fixture
def bare_app(backend_url: str) -> Iterator[Flask]:
    """An app on a database that has none of the extension's tables."""
    app, _, _ = create_app(backend_url)
    yield app
    app.extensions["apikeys"].extension.close(app)
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


@pytest.fixture
def app_missing_a_column(backend_url: str) -> Iterator[Flask]:
    """An app whose ``organizations`` table lacks a column (migrations not run after an
    upgrade)."""
    app, db, apikeys = create_app(backend_url)
    with app.app_context():
        db.create_all()
        with db.engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE organizations DROP COLUMN plan"))
    yield app
    apikeys.close(app)
    with app.app_context():
        db.drop_all()
        db.engine.dispose()


def test_the_python_api_says_to_run_the_migrations(bare_app: Flask) -> None:
    apikeys = bare_app.extensions["apikeys"].extension
    with bare_app.app_context(), pytest.raises(BackendUnavailable) as raised:
        apikeys.create_organization(name="Acme", email="admin@acme.com", plan="pro")
    assert SET_UP_HINT in raised.value.detail
    assert "try again" not in raised.value.detail


def test_a_key_checked_against_missing_tables_is_a_503_saying_what_to_run(
    bare_app: Flask,
) -> None:
    key = generate_key("pk", "live")  # well formed: it reaches the database
    response = bare_app.test_client().get("/v1/presentations", headers={"X-API-Key": key})
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["code"] == "backend_unavailable"
    assert SET_UP_HINT in body["detail"]


@pytest.mark.parametrize(
    "command",
    [["org", "list"], ["key", "list", "--org", "acme"], ["seed"], ["usage", "--org", "acme"]],
)
def test_the_cli_says_to_run_the_migrations_in_one_line(
    bare_app: Flask, command: list[str]
) -> None:
    result = bare_app.test_cli_runner().invoke(args=["apikeys", *command])
    assert result.exit_code == 1
    assert SET_UP_HINT in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_a_missing_column_says_to_run_the_migrations(app_missing_a_column: Flask) -> None:
    result = app_missing_a_column.test_cli_runner().invoke(args=["apikeys", "org", "list"])
    assert result.exit_code == 1
    assert SET_UP_HINT in result.stderr


def test_a_database_that_cannot_be_opened_still_says_try_again(tmp_path: Any) -> None:
    app, _, apikeys = create_app(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.sqlite'}")
    try:
        result = app.test_cli_runner().invoke(args=["apikeys", "org", "list"])
    finally:
        apikeys.close(app)
    assert result.exit_code == 1
    assert "could not be reached; try again" in result.stderr
    assert SET_UP_HINT not in result.stderr


def test_the_usage_writer_logs_what_to_run_not_a_traceback_a_second(
    bare_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the writer logged the driver's traceback at every flush, forever."""
    key = generate_key("pk", "live")
    with caplog.at_level(logging.ERROR, logger="flask_apikeys"):
        bare_app.test_client().get("/v1/presentations", headers={"X-API-Key": key})
        bare_app.extensions["apikeys"].extension.close(bare_app)  # writes what is queued
    failures = [record for record in caplog.records if "could not write" in record.getMessage()]
    assert failures, "nothing was queued: the test no longer exercises the writer"
    for record in failures:
        assert SET_UP_HINT in record.getMessage()
        assert record.exc_info is None
