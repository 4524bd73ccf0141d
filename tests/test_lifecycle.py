"""An app's lifetime: ``APIKeys.close()`` writes what is queued, stops the writer thread and
closes storage connections, on every database and rate-limit storage the docs allow."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.models import APIKeyUsage

from .factory import create_app

WRITER_THREAD = "flask-apikeys-usage"


@pytest.fixture
def database_url(backend_url: str) -> str:
    """SQLite, PostgreSQL and MariaDB."""
    return backend_url


def writer_threads() -> int:
    return sum(
        thread.name == WRITER_THREAD and thread.is_alive() for thread in threading.enumerate()
    )


def usage_rows(app: Flask) -> int:
    with app.app_context():
        engine = app.extensions["sqlalchemy"].engine
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(APIKeyUsage)) or 0)


def serve(app: Flask, requests: int) -> None:
    """``requests`` authenticated requests with a new key, each answered 200."""
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        org = apikeys.create_organization(name="A", email="a@a.io").id
        key = apikeys.create_key(org, "k", scopes=["*"]).key
    client = app.test_client()
    for _ in range(requests):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200


def test_close_writes_what_is_queued_and_stops_the_writer_thread(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(APIKEYS_USAGE_FLUSH_INTERVAL=3600)  # nothing is written unless we close
    apikeys: APIKeys = app.extensions["apikeys"].extension
    before = writer_threads()
    serve(app, 3)
    assert writer_threads() == before + 1
    assert usage_rows(app) == 0
    apikeys.close(app)
    assert writer_threads() == before
    assert usage_rows(app) == 3
    serve(app, 1)  # an app still serving after close() records at once, without a thread
    assert usage_rows(app) == 4 and writer_threads() == before
    with app.app_context():
        apikeys.close()  # again, from the app context: nothing left to do
    assert usage_rows(app) == 4


@pytest.mark.slow
def test_thirty_throwaway_apps_leave_no_thread_behind(tmp_path: Any) -> None:
    before = writer_threads()
    for number in range(30):
        app, _, apikeys = create_app(f"sqlite:///{tmp_path / f'{number}.sqlite'}")
        with app.app_context():
            apikeys.create_all()
        serve(app, 1)
        apikeys.close(app)
        assert usage_rows(app) == 1
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
    assert writer_threads() == before


def test_close_on_an_app_without_the_extension_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        APIKeys().close(Flask(__name__))


def connected_clients(ports: list[int]) -> int:
    """Clients connected to the Redis servers on ``ports`` (this probe's own excluded).

    Clients that earlier tests dropped without closing are collected first: they hold a
    connection until the garbage collector runs, which would make the count drift.
    """
    gc.collect()
    total = 0
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            total += int(client.info("clients")["connected_clients"]) - 1
        finally:
            client.close()
    return total


@pytest.mark.parametrize(
    "deployment",
    [
        # Redis sees a closed socket on its next turn: waits of up to seconds.
        pytest.param("redis_server", marks=[pytest.mark.redis, pytest.mark.slow], id="redis"),
        pytest.param(
            "redis_cluster_server",
            marks=[pytest.mark.redis_cluster, pytest.mark.slow],
            id="cluster",
        ),
        pytest.param(
            "redis_sentinel_server",
            marks=[pytest.mark.redis_sentinel, pytest.mark.slow],
            id="sentinel",
        ),
    ],
)
def test_close_closes_the_rate_limit_storage_connections_it_opened(
    tmp_path: Any, request: pytest.FixtureRequest, deployment: str
) -> None:
    server = request.getfixturevalue(deployment)
    if deployment == "redis_server":
        server.start()
        ports = [server.port]
    elif deployment == "redis_cluster_server":
        ports = list(server.ports)
    else:
        ports = [server.master_port, server.sentinel_port]
    before = connected_clients(ports)
    app, _, apikeys = create_app(
        f"sqlite:///{tmp_path / 'apikeys.sqlite'}", APIKEYS_RATELIMIT_STORAGE_URI=server.url
    )
    with app.app_context():
        apikeys.create_all()
    try:
        serve(app, 3)
        assert connected_clients(ports) > before
    finally:
        apikeys.close(app)
    # A closed socket is seen by Redis on its next turn of the event loop, not at once.
    deadline = time.monotonic() + 5
    while connected_clients(ports) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connected_clients(ports) == before
