"""gunicorn workers on 127.0.0.1 sharing Redis or the database: the limit holds across
processes; counting in memory warns that it does not."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flask_apikeys.limiting.processes import PER_PROCESS_WARNING

from .factory import create_app
from .servers import get, gunicorn_workers

pytestmark = [pytest.mark.slow]
LIMIT = 20
CLIENTS = 6


@pytest.fixture
def gunicorn(redis_url: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """gunicorn -w 2 on a free port, its database holding one key limited to LIMIT a minute."""
    database_url = f"sqlite:///{tmp_path / 'gunicorn.sqlite'}"
    app, _, apikeys = create_app(database_url)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro")
        key = apikeys.create_key(org, "k", scopes=["*"], rate_limit=f"{LIMIT}/minute").key
        app.extensions["sqlalchemy"].engine.dispose()
    environment = {"TEST_DATABASE_URL": database_url, "APIKEYS_RATELIMIT_STORAGE_URI": redis_url}
    with gunicorn_workers(environment, tmp_path / "gunicorn.log") as (_, port):
        yield port, key


@pytest.mark.redis
def test_two_gunicorn_workers_sharing_redis_let_exactly_the_limit_through(
    gunicorn: tuple[int, str],
) -> None:
    port, key = gunicorn
    barrier = threading.Barrier(CLIENTS)

    def run(worker: int) -> list[tuple[int, str]]:
        barrier.wait()
        return [
            get(port, "/v1/whoami", {"X-API-Key": key}) for _ in range(worker, 3 * LIMIT, CLIENTS)
        ]

    with ThreadPoolExecutor(CLIENTS) as pool:
        results: list[Any] = [answer for batch in pool.map(run, range(CLIENTS)) for answer in batch]
    statuses = [status for status, _ in results]
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == 2 * LIMIT
    assert len({pid for _, pid in results}) == 2  # both workers answered


# -- four workers: sliding windows on Redis, the database storage, memory's warning ----------

WORKERS = 4


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., Any]:
    """gunicorn -w 4 over a given database and storage, one key limited to LIMIT an hour (an
    hour: a run cannot straddle a window boundary, where a sliding window lets a share of the
    previous window's count through)."""

    @contextmanager
    def start(database_url: str, storage_uri: str) -> Iterator[tuple[int, str, Path]]:
        app, _, apikeys = create_app(database_url)
        with app.app_context():
            apikeys.create_all()
            org = apikeys.create_organization(
                name="Acme", email="a@acme.io", plan="pro", rate_limit_per_minute=1000
            )
            key = apikeys.create_key(org, "k", scopes=["*"], rate_limit=f"{LIMIT}/hour").key
        apikeys.close(app)  # its writer's last rows, then its connections
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
        environment = {
            "TEST_DATABASE_URL": database_url,
            "APIKEYS_RATELIMIT_STORAGE_URI": storage_uri,
        }
        log = tmp_path / "gunicorn.log"
        with gunicorn_workers(environment, log, workers=WORKERS) as (_, port):
            yield port, key, log

    return start


def race(port: int, key: str, total: int, clients: int = 8) -> list[tuple[int, str]]:
    barrier = threading.Barrier(clients)

    def run(worker: int) -> list[tuple[int, str]]:
        barrier.wait()
        return [get(port, "/v1/whoami", {"X-API-Key": key}) for _ in range(worker, total, clients)]

    with ThreadPoolExecutor(clients) as pool:
        return [answer for batch in pool.map(run, range(clients)) for answer in batch]


def race_until_workers_answered(port: int, key: str, workers: int) -> list[tuple[int, str]]:
    """:func:`race` for three times the limit, then more rounds until ``workers`` processes
    have answered (at most five): which worker accepts a connection is the kernel's choice,
    and on a busy machine two of them may take a whole round. Every later round must be
    refused by whichever worker answers it: the limit is spent for all of them."""
    results = race(port, key, 3 * LIMIT)
    for _ in range(5):
        if len({pid for _, pid in results}) >= workers:
            break
        results += race(port, key, LIMIT)
    return results


@pytest.mark.redis
def test_four_workers_sharing_redis_let_exactly_the_limit_through_a_sliding_window(
    serve: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    with serve(f"sqlite:///{tmp_path / 'g.sqlite'}", redis_url) as (port, key, _):
        results = race_until_workers_answered(port, key, 3)
    statuses = [status for status, _ in results]
    assert statuses.count(200) == LIMIT and statuses.count(429) == len(results) - LIMIT
    assert len({pid for _, pid in results}) >= 3  # the workers took turns


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_four_workers_counting_in_the_database_let_exactly_the_limit_through(
    serve: Callable[..., Any], tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    if backend == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'g.sqlite'}"
    else:
        database_url = request.getfixturevalue("postgresql_url")
    with serve(database_url, "database") as (port, key, log):
        results = race_until_workers_answered(port, key, 3)
    statuses = [status for status, _ in results]
    assert statuses.count(200) == LIMIT and statuses.count(429) == len(results) - LIMIT
    assert len({pid for _, pid in results}) >= 3
    assert PER_PROCESS_WARNING not in log.read_text()


def test_four_workers_counting_in_memory_warn_that_limits_are_per_process(
    serve: Callable[..., Any], tmp_path: Path
) -> None:
    with serve(f"sqlite:///{tmp_path / 'g.sqlite'}", "memory://") as (port, key, log):
        statuses = [status for status, _ in race(port, key, 3 * LIMIT)]
        assert statuses.count(200) > LIMIT  # what the warning is about
    text = log.read_text()
    assert PER_PROCESS_WARNING in text  # each worker says so at its first counted request
