"""Two gunicorn workers on 127.0.0.1 sharing Redis: the limit holds across processes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .factory import create_app
from .servers import get, gunicorn_workers

pytestmark = [pytest.mark.slow, pytest.mark.redis]
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
