"""Fixtures: a fresh app per test on real SQLite, and on real PostgreSQL where parametrized."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys
from flask_apikeys.models import metadata

from .factory import create_app

pytest_plugins = ["tests.servers", "tests.parallel"]


def sqlite_without_fsync(dbapi_connection: Any, connection_record: Any) -> None:
    """``PRAGMA synchronous = OFF`` on every SQLite connection the tests open.

    A commit then hands its pages to the operating system without waiting for the disk:
    milliseconds saved per commit on a busy disk, thousands of commits a run. Nothing else
    changes (locking, journal, what another connection or process reads); only a power cut
    could lose data, which no test needs to survive, as the PostgreSQL fixture runs fsync=off.
    """
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA synchronous = OFF")


@pytest.fixture(scope="session", autouse=True)
def sqlite_commits_without_fsync() -> Iterator[None]:
    """Every engine of the session opens its SQLite connections without fsync."""
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", sqlite_without_fsync)
    yield
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", sqlite_without_fsync)


@pytest.fixture(autouse=True)
def enabled_extension_loggers() -> None:
    """Our loggers reach ``caplog`` whatever ran before in this worker: a migration test runs
    an ``env.py`` whose ``fileConfig`` disables every logger that already exists."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("flask_apikeys") and isinstance(logger, logging.Logger):
            logger.disabled = False


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    """A SQLite file of this test's own (a file, so threads and processes can share it)."""
    return f"sqlite:///{tmp_path / 'apikeys.sqlite'}"


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Extra configuration for the app; override in a test module to change it."""
    return {}


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the extension's tables, built once per session.

    Creating the schema costs a dozen DDL commits; copying this file costs a millisecond, so
    every test still starts from its own empty database built by ``create_all``.
    """
    path = tmp_path_factory.mktemp("sqlite-template") / "apikeys.sqlite"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    return path


@pytest.fixture
def create_tables(sqlite_template: Path) -> Callable[[Flask, APIKeys], None]:
    """Give an app the extension's tables: a copy of the template for a SQLite file that does
    not exist yet, ``create_all`` for anything else (PostgreSQL, in-memory, existing files)."""

    def create(flask_app: Flask, apikeys: APIKeys) -> None:
        url = sqlalchemy.make_url(flask_app.config["SQLALCHEMY_DATABASE_URI"])
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            target = Path(url.database)
            if target.is_absolute() and not target.exists() and not url.query:
                shutil.copyfile(sqlite_template, target)
                return
        with flask_app.app_context():
            apikeys.create_all()

    return create


@pytest.fixture
def app(
    database_url: str,
    app_config: dict[str, Any],
    create_tables: Callable[[Flask, APIKeys], None],
) -> Iterator[Flask]:
    flask_app, _, apikeys = create_app(database_url, **app_config)
    create_tables(flask_app, apikeys)
    yield flask_app
    apikeys.close(flask_app)  # write what the test left queued while its database still exists
    with flask_app.app_context():
        flask_app.extensions["sqlalchemy"].engine.dispose()


@pytest.fixture
def db(app: Flask) -> SQLAlchemy:
    return app.extensions["sqlalchemy"]


@pytest.fixture
def apikeys(app: Flask) -> APIKeys:
    return app.extensions["apikeys"].extension


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def organization(app: Flask, apikeys: APIKeys) -> Any:
    with app.app_context():
        org = apikeys.create_organization(name="Acme", email="admin@acme.com", plan="pro")
        return org.id


@pytest.fixture
def make_key(app: Flask, apikeys: APIKeys, organization: Any) -> Callable[..., str]:
    """Create a key in the ``organization`` (or another) and return the full secret."""

    def make(scopes: Any = ("*",), org: Any = None, **options: Any) -> str:
        with app.app_context():
            created = apikeys.create_key(org or organization, "Test key", scopes=scopes, **options)
            return created.key

    return make


@pytest.fixture
def make_app(
    database_url: str, create_tables: Callable[[Flask, APIKeys], None]
) -> Iterator[Callable[..., Flask]]:
    """Apps a test builds itself with the given configuration, on its database unless told
    otherwise; their usage writers are closed while the database still exists."""
    apps: list[Flask] = []

    def make(url: str | None = None, **config: Any) -> Flask:
        built, _, apikeys = create_app(url or database_url, **config)
        create_tables(built, apikeys)
        apps.append(built)
        return built

    yield make
    for built in apps:
        built.extensions["apikeys"].extension.close(built)
        with built.app_context():
            built.extensions["sqlalchemy"].engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=[pytest.mark.mariadb, pytest.mark.slow]),
    ]
)
def backend_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The same test on SQLite, on a real PostgreSQL 15 and on a real MariaDB.

    A test that builds its apps with ``create_tables`` (``app``, ``make_app``) would create
    the extension's tables first thing: on PostgreSQL its database comes with them already.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'apikeys.sqlite'}"
    if request.param == "postgresql" and "create_tables" in request.fixturenames:
        return str(request.getfixturevalue("postgresql_url_with_tables"))
    return str(request.getfixturevalue(f"{request.param}_url"))
