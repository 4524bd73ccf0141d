"""Real PostgreSQL 15 and Redis servers for the test session, on 127.0.0.1 only.

Loaded as a pytest plugin from ``conftest.py``. Each server runs from a temporary directory and
is stopped at the end of the session. Without the binaries the tests that need them are
skipped locally, but fail in CI (``CI`` set), where they must run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, log: Path | None = None) -> None:
    """Poll ``ready`` until it is true or the startup timeout passes, then fail with the log."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    details = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {STARTUP_TIMEOUT:.0f} s\n{details}")


def missing(binary: str) -> None:
    """Skip locally, fail in CI, when a server binary is not installed."""
    message = f"{binary} is not installed (apt-get install -y postgresql-15 redis-server)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class PostgreSQLServer:
    """A running throwaway PostgreSQL cluster."""

    host: str
    port: int
    user: str

    @property
    def base_url(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/postgres"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(statement)

    def create_database(self, name: str) -> str:
        self._admin(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{name}"

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgreSQLServer]:
    """One PostgreSQL 15 cluster for the session (run as ``postgres``: it refuses root)."""
    if not (POSTGRES_BIN / "initdb").exists():
        missing("PostgreSQL 15")
    workdir = Path(tempfile.mkdtemp(prefix="apikeys-pg-"))
    data, log = workdir / "data", workdir / "server.log"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(workdir, "postgres")
    subprocess.run(
        [*as_postgres, str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust",
         "-U", "postgres", "--no-sync"],
        check=True, capture_output=True,
    )
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={workdir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
    )
    subprocess.run(
        [*as_postgres, str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-l", str(log),
         "-o", options, "-w", "-t", str(int(STARTUP_TIMEOUT)), "start"],
        check=True, capture_output=True,
    )
    server = PostgreSQLServer(host="127.0.0.1", port=port, user="postgres")
    try:
        wait_until(lambda: _accepts(server), "PostgreSQL", log)
        yield server
    finally:
        subprocess.run(
            [*as_postgres, str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
             "-w", "stop"],
            check=False, capture_output=True,
        )
        shutil.rmtree(workdir, ignore_errors=True)


def _accepts(server: PostgreSQLServer) -> bool:
    try:
        server._admin("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
    return True


@pytest.fixture
def postgresql_url(postgresql_server: PostgreSQLServer) -> Iterator[str]:
    """A fresh, empty database for this test; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgresql_server.create_database(name)
    yield url
    postgresql_server.drop_database(name)


class RedisServer:
    """A throwaway redis-server that a test may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.is_running():
            return
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, "Redis", self.log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session."""
    if shutil.which("redis-server") is None:
        missing("redis-server")
    server = RedisServer(Path(tempfile.mkdtemp(prefix="apikeys-redis-")))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, running (restarted if a test stopped it) and empty."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url
