"""Fixtures: a fresh app per test on real SQLite, and on real PostgreSQL where parametrized."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys

from .factory import create_app

pytest_plugins = ["tests.servers"]


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    """A SQLite file of this test's own (a file, so threads and processes can share it)."""
    return f"sqlite:///{tmp_path / 'apikeys.sqlite'}"


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Extra configuration for the app; override in a test module to change it."""
    return {}


@pytest.fixture
def app(database_url: str, app_config: dict[str, Any]) -> Iterator[Flask]:
    flask_app, _, apikeys = create_app(database_url, **app_config)
    with flask_app.app_context():
        apikeys.create_all()
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
def make_app(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Apps a test builds itself with the given configuration, on its database unless told
    otherwise; their usage writers are closed while the database still exists."""
    apps: list[Flask] = []

    def make(url: str | None = None, **config: Any) -> Flask:
        built, _, apikeys = create_app(url or database_url, **config)
        with built.app_context():
            apikeys.create_all()
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
    """The same test on SQLite, on a real PostgreSQL 15 and on a real MariaDB."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'apikeys.sqlite'}"
    return str(request.getfixturevalue(f"{request.param}_url"))
