"""Throwaway PostgreSQL 15 and Redis servers for the benchmarks, on 127.0.0.1 only.

The test suite's servers (:mod:`tests.servers`: no fsync, nothing persisted), started from a
temporary directory and removed on leaving the context; given a URL instead, the context
yields it untouched.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from tests.servers import POSTGRES_BIN, postgresql_installed, running_postgresql, running_redis


@contextmanager
def redis_server(url: str | None = None) -> Iterator[str]:
    """The given Redis URL, or a throwaway redis-server's."""
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    with running_redis() as server:
        yield server.url


@contextmanager
def postgresql_server(url: str | None = None) -> Iterator[str]:
    """The given database URL, or the ``postgres`` database of a throwaway PostgreSQL 15."""
    if url:
        yield url
        return
    if not postgresql_installed():
        raise SystemExit(f"PostgreSQL 15 is not installed ({POSTGRES_BIN}/initdb)")
    with running_postgresql(shared_buffers="64MB") as server:
        yield server.base_url
