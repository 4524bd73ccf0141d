"""Counters in the app's database (``APIKEYS_RATELIMIT_STORAGE_URI = "database"``), and the
warning that ``memory://`` counts per process.

Exactness across real gunicorn workers is in tests/test_limiting_gunicorn.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.limiting import windows
from flask_apikeys.limiting.counters import Counter
from flask_apikeys.limiting.database import DatabaseCounters
from flask_apikeys.limiting.leases import LeasedCounters
from flask_apikeys.limiting.processes import PER_PROCESS_WARNING
from flask_apikeys.models import RateLimitCounter, metadata

from .factory import create_app
from .helpers import assert_problem
from .servers import PostgreSQLServer
from .test_limiting_redis import hammer

LIMIT = 15


@pytest.fixture(autouse=True)
def logger_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alembic's ``fileConfig`` (tests/test_migrations.py runs ``flask db``) disables loggers
    that exist when it runs; the warnings checked here must still reach ``caplog``."""
    monkeypatch.setattr(logging.getLogger("flask_apikeys"), "disabled", False)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A SQLite file, and a real PostgreSQL 15 database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'limits.sqlite'}"
    return str(request.getfixturevalue("postgresql_url"))


@pytest.fixture
def build() -> Iterator[Callable[..., tuple[Flask, APIKeys]]]:
    apps: list[Flask] = []

    def make(database_url: str, **config: Any) -> tuple[Flask, APIKeys]:
        app, _, apikeys = create_app(
            database_url, APIKEYS_RATELIMIT_STORAGE_URI="database", **config
        )
        with app.app_context():
            apikeys.create_all()
        apps.append(app)
        return app, apikeys

    yield make
    for app in apps:
        app.extensions["apikeys"].extension.close(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def rows(app: Flask) -> dict[str, int]:
    with app.app_context(), app.extensions["sqlalchemy"].engine.connect() as connection:
        table = RateLimitCounter.__table__
        return {row.counter_key: row.request_count for row in connection.execute(sa.select(table))}


def test_a_key_past_its_limit_is_refused_and_a_refusal_takes_nothing(
    url: str, build: Callable[..., tuple[Flask, APIKeys]]
) -> None:
    app, apikeys = build(url)
    with app.app_context():
        org = apikeys.create_organization(
            name="A", email="a@a.io", plan="pro", rate_limit_per_minute=100
        )
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit="3/minute").key
    client = app.test_client()
    statuses = [client.get("/v1/whoami", headers={"X-API-Key": key}).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    counted = rows(app)
    by_kind = {
        name.split(":")[2] if "quota" not in name else "quota": n for name, n in counted.items()
    }
    assert by_kind == {"quota": 3, "org": 3, "key": 3}  # the two refusals took nothing


def test_threads_racing_for_a_limit_get_exactly_the_limit(
    url: str, build: Callable[..., tuple[Flask, APIKeys]]
) -> None:
    app, apikeys = build(url)
    with app.app_context():
        org = apikeys.create_organization(name="A", email="a@a.io", rate_limit_per_minute=1000)
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit=f"{LIMIT}/hour").key
    statuses = hammer(app, [key], 3 * LIMIT, clients=8)
    assert statuses.count(200) == LIMIT and statuses.count(429) == 2 * LIMIT


def test_a_busy_key_touches_its_rows_once_per_lease_not_per_request(
    url: str, build: Callable[..., tuple[Flask, APIKeys]]
) -> None:
    app, apikeys = build(url, APIKEYS_RATELIMIT_LEASE_SECONDS=5.0)
    with app.app_context():
        org = apikeys.create_organization(name="A", email="a@a.io", rate_limit_per_minute=10**6)
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit="1000000/hour").key
        engine = app.extensions["sqlalchemy"].engine
    updates: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(_c: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SELECT") and "FROM api_key_rate_limit_tracking" in statement:
            updates.append(statement)  # one per transaction that takes units

    client = app.test_client()
    responses = [client.get("/v1/whoami", headers={"X-API-Key": key}) for _ in range(300)]
    assert all(response.status_code == 200 for response in responses)
    transactions = len(updates)
    assert 2 <= transactions < 300 / 10, transactions
    counted = rows(app)
    assert all(300 <= value < 300 + 10**6 // 64 for value in counted.values()), counted


@pytest.mark.postgres
@pytest.mark.parametrize("fail_open", [False, True])
def test_a_dead_database_refuses_with_503_or_warns_as_the_redis_storage_does(
    postgresql_server: PostgreSQLServer,
    postgresql_url: str,
    build: Callable[..., tuple[Flask, APIKeys]],
    caplog: pytest.LogCaptureFixture,
    fail_open: bool,
) -> None:
    app, apikeys = build(
        postgresql_url, APIKEYS_RATELIMIT_FAIL_OPEN=fail_open, APIKEYS_CACHE_TTL=60
    )
    with app.app_context():
        org = apikeys.create_organization(name="A", email="a@a.io", rate_limit_per_minute=100)
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit="3/minute").key
    client = app.test_client()
    assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    name = postgresql_url.rsplit("/", 1)[1]
    with psycopg.connect(postgresql_server.base_url.replace("+psycopg", ""), autocommit=True) as pg:
        pg.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
    try:
        with caplog.at_level(logging.WARNING, "flask_apikeys"):
            response = client.get("/v1/whoami", headers={"X-API-Key": key})
        assert "Rate-limit storage unreachable" in caplog.text
        if fail_open:
            assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers
        else:
            assert_problem(response, 503, "backend_unavailable")
    finally:
        with psycopg.connect(
            postgresql_server.base_url.replace("+psycopg", ""), autocommit=True
        ) as pg:
            pg.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_memory_storage_under_a_server_of_several_processes_warns_and_names_both_fixes(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    for multiprocess, storage in [(True, "memory://"), (False, "memory://"), (True, "database")]:
        app, _, apikeys = create_app(database_url, APIKEYS_RATELIMIT_STORAGE_URI=storage)
        with app.app_context():
            apikeys.create_all()
            org = apikeys.create_organization(name="A", email="a@a.io")
            key = apikeys.create_key(org, "k", scopes=["*"]).key
        caplog.clear()
        with caplog.at_level(logging.WARNING, "flask_apikeys"):
            for _ in range(2):
                response = app.test_client().get(
                    "/v1/whoami",
                    headers={"X-API-Key": key},
                    multiprocess=multiprocess,  # wsgi.multiprocess, as gunicorn -w 4 sets it
                )
                assert response.status_code == 200
        warned = caplog.text.count(PER_PROCESS_WARNING)
        assert warned == (1 if multiprocess and storage == "memory://" else 0), storage
        if warned:
            assert "redis://" in caplog.text and '"database"' in caplog.text
        apikeys.close(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def test_a_worker_forked_after_counting_in_memory_warns(
    app: Flask, make_key: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    key = make_key()
    assert app.test_client().get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    with caplog.at_level(logging.WARNING, "flask_apikeys"):
        child = os.fork()
        if child == 0:  # the child reports through its exit status
            os._exit(0 if PER_PROCESS_WARNING in caplog.text else 1)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert PER_PROCESS_WARNING not in caplog.text  # the parent itself is one process


def test_a_lease_gives_back_the_units_it_did_not_use_to_their_window(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    moments = iter([1_900_000_000.0 + 10 * step for step in range(1000)])
    now = [1_900_000_000.0]
    monkeypatch.setattr(windows, "now", lambda: now[0])
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'leases.sqlite'}")
    metadata.create_all(engine)
    first, second = (LeasedCounters(DatabaseCounters(lambda: engine), 0.1) for _ in range(2))
    for sliding in (False, True):
        counter = Counter(f"k{sliding}", 10**6, 60, sliding=sliding)
        now[0] = next(moments)
        first.take((counter,))  # exact: a key not seen busy yet
        first.take((counter,))  # busy (no time passed): a lease of 100, 1 used
        second.take((counter,))
        assert stored(engine, counter.key) == 1 + 100 + 1
        now[0] += 0.2  # the lease has ended with 99 units unused
        first.take((counter,))  # gives them back, then takes one (the pace has dropped)
        assert stored(engine, counter.key) == 4  # exactly what was used
    engine.dispose()


def stored(engine: sa.Engine, key: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(RateLimitCounter.request_count).where(RateLimitCounter.counter_key == key)
            ).scalar_one()
        )
