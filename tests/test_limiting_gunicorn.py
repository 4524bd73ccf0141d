"""Two gunicorn workers on 127.0.0.1 sharing Redis: the limit holds across processes."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .factory import create_app
from .servers import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.redis]
ROOT = Path(__file__).resolve().parent.parent
LIMIT = 20
CLIENTS = 6


def request(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Worker-Pid") or ""
    finally:
        connection.close()


def both_workers_answer(port: int) -> bool:
    """Whether concurrent requests to a public path are answered by two different workers."""
    try:
        with ThreadPoolExecutor(4) as pool:
            answered = list(pool.map(lambda _: request(port, "/health"), range(8)))
    except OSError:
        return False
    return len({pid for status, pid in answered if status == 200}) == 2


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
    port = free_port()
    log = tmp_path / "gunicorn.log"
    environment = {
        **os.environ,
        "TEST_DATABASE_URL": database_url,
        "APIKEYS_RATELIMIT_STORAGE_URI": redis_url,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-b",
                f"127.0.0.1:{port}",
                "tests.gunicorn_app:app",
            ],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: both_workers_answer(port), "two gunicorn workers", log)
        yield port, key
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_two_gunicorn_workers_sharing_redis_let_exactly_the_limit_through(
    gunicorn: tuple[int, str],
) -> None:
    port, key = gunicorn
    barrier = threading.Barrier(CLIENTS)

    def run(worker: int) -> list[tuple[int, str]]:
        barrier.wait()
        return [
            request(port, "/v1/whoami", {"X-API-Key": key})
            for _ in range(worker, 3 * LIMIT, CLIENTS)
        ]

    with ThreadPoolExecutor(CLIENTS) as pool:
        results: list[Any] = [answer for batch in pool.map(run, range(CLIENTS)) for answer in batch]
    statuses = [status for status, _ in results]
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == 2 * LIMIT
    assert len({pid for _, pid in results}) == 2  # both workers answered
