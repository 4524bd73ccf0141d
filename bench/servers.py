"""Throwaway PostgreSQL 15 and Redis servers for the benchmarks, on 127.0.0.1 only.

Each is started from a temporary directory and stopped (and the directory removed) on leaving
the context; given a URL instead, the context yields it untouched. The same settings as the
test suite's servers (``tests/servers.py``): no fsync, nothing persisted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

POSTGRES_BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} was not ready within {STARTUP_TIMEOUT:.0f} s")


@contextmanager
def redis_server(url: str | None = None) -> Iterator[str]:
    """The given Redis URL, or a throwaway redis-server's."""
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    import redis

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="apikeys-bench-redis-")
    process = subprocess.Popen(
        ["redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host=HOST, port=port, socket_timeout=0.5, socket_connect_timeout=0.5)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(ready, "redis-server")
        yield f"redis://{HOST}:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def postgresql_server(url: str | None = None) -> Iterator[str]:
    """The given database URL, or a database on a throwaway PostgreSQL 15 cluster."""
    if url:
        yield url
        return
    if not (POSTGRES_BIN / "initdb").exists():
        raise SystemExit(f"PostgreSQL 15 is not installed ({POSTGRES_BIN}/initdb)")
    import psycopg

    workdir = Path(tempfile.mkdtemp(prefix="apikeys-bench-pg-"))
    data = workdir / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(workdir, "postgres", "postgres")
    pg_ctl = [*as_postgres, str(POSTGRES_BIN / "pg_ctl"), "-D", str(data)]
    port = free_port()
    options = (
        f"-c listen_addresses={HOST} -c port={port} -c unix_socket_directories={workdir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB"
    )

    def ready() -> bool:
        try:
            psycopg.connect(host=HOST, port=port, user="postgres", connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    try:
        subprocess.run(
            [*as_postgres, str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust"]
            + ["-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*pg_ctl, "-l", str(workdir / "server.log"), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
            timeout=STARTUP_TIMEOUT + 30,
        )
        wait_until(ready, "PostgreSQL")
        yield f"postgresql+psycopg://postgres@{HOST}:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
