"""Real PostgreSQL 15 and Redis servers for the test session, on 127.0.0.1 only.

Loaded as a pytest plugin from ``conftest.py``. Each server runs from a temporary directory and
is stopped at the end of the session. Without the binaries the tests that need them are
skipped locally, but fail in CI (``CI`` set), where they must run.
"""

from __future__ import annotations

import getpass
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy

from flask_apikeys.models import metadata

POSTGRES_BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers here too, so the plugin works without pyproject's list."""
    config.addinivalue_line("markers", "slow: takes seconds; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "postgres: needs the real PostgreSQL server fixture")
    config.addinivalue_line("markers", "redis: needs the real Redis server fixture")
    config.addinivalue_line("markers", "redis_cluster: needs the real 3-node Redis Cluster fixture")
    config.addinivalue_line("markers", "redis_sentinel: needs the real Redis Sentinel fixture")
    config.addinivalue_line("markers", "mariadb: needs the real MariaDB server fixture")


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# Throwaway server data lives in memory where there is room: creating a PostgreSQL database
# (a copy of the template's files) and every write then cost no disk I/O, ten times faster
# on a busy disk. Docker's default /dev/shm is 64 MB, too small for the servers: then disk.
MEMORY_FILESYSTEM = Path("/dev/shm")
MEMORY_FILESYSTEM_ROOM = 1 << 30


def scratch_directory(prefix: str) -> Path:
    """A new private directory for a throwaway server: in memory when there is room, else in
    the temporary directory (``TMPDIR``)."""
    try:
        statistics = os.statvfs(MEMORY_FILESYSTEM)
    except OSError:
        statistics = None
    roomy = statistics is not None and (
        statistics.f_bavail * statistics.f_frsize >= MEMORY_FILESYSTEM_ROOM
    )
    if roomy and os.access(MEMORY_FILESYSTEM, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=prefix, dir=MEMORY_FILESYSTEM))
    return Path(tempfile.mkdtemp(prefix=prefix))


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log written)"


def wait_until(ready: Callable[[], bool], what: str, log: Path) -> None:
    """Poll ``ready`` until true or the timeout passes: a hung server must not hang the suite."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {STARTUP_TIMEOUT:.0f} s; log:\n{tail(log)}")


def missing(binary: str) -> None:
    """Skip locally, fail in CI, when a server binary is not installed: CI must never skip."""
    message = (
        f"{binary} is not installed "
        "(apt-get install -y postgresql-15 redis-server redis-sentinel mariadb-server)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so these tests must not be skipped")
    pytest.skip(message)


def run(command: list[str], what: str, log: Path | None = None) -> None:
    """Run a server tool; on failure raise with its output and the server log, not just a code."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=STARTUP_TIMEOUT + 30)
    if done.returncode != 0:
        server_log = f"\nserver log:\n{tail(log)}" if log else ""
        raise RuntimeError(
            f"{what} failed ({done.returncode}): {' '.join(command)}\n"
            f"{done.stdout}{done.stderr}{server_log}"
        )


@dataclass
class PostgreSQLServer:
    """A running throwaway PostgreSQL cluster, trusted (no password) on 127.0.0.1."""

    host: str
    port: int
    user: str

    @property
    def base_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def _admin(self, statement: str, *names: str) -> None:
        """Run one statement on ``postgres`` in autocommit (CREATE DATABASE needs it), with
        ``names`` quoted into its ``{}``."""
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(*map(sql.Identifier, names))
        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        ) as connection:
            connection.execute(query)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create an empty database (or a copy of ``template``) and return its SQLAlchemy URL.

        ``FILE_COPY`` copies the template's files instead of logging every page to the WAL
        (PostgreSQL 15's default): about five times faster here, where nothing is durable anyway.
        """
        if template is None:
            self._admin("CREATE DATABASE {} STRATEGY FILE_COPY", name)
        else:
            self._admin("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY", name, template)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, terminating whatever is still connected to it."""
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def accepts_connections(self) -> bool:
        try:
            self._admin("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure here means "not yet"
            return False
        return True


@contextmanager
def running_postgresql(shared_buffers: str = "16MB") -> Iterator[PostgreSQLServer]:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 (run as ``postgres``: it refuses root),
    without durability (fsync off: nothing here must survive), removed on exit."""
    workdir = scratch_directory("apikeys-pg-")
    data, log = workdir / "data", workdir / "server.log"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(workdir, "postgres", "postgres")
    pg_ctl = [*as_postgres, str(POSTGRES_BIN / "pg_ctl"), "-D", str(data)]
    port = free_port()
    options = (
        f"-c listen_addresses={HOST} -c port={port} -c unix_socket_directories={workdir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        f"-c wal_level=minimal -c max_wal_senders=0 -c shared_buffers={shared_buffers} "
        "-c max_connections=100 -c autovacuum=off"
    )
    try:
        run(
            [
                *as_postgres,
                str(POSTGRES_BIN / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        run(
            [
                *pg_ctl,
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(STARTUP_TIMEOUT)),
                "start",
            ],
            "pg_ctl start",
            log,
        )
        server = PostgreSQLServer(host=HOST, port=port, user="postgres")
        wait_until(server.accepts_connections, "PostgreSQL", log)
        yield server
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def postgresql_installed() -> bool:
    return (POSTGRES_BIN / "initdb").exists() and (POSTGRES_BIN / "pg_ctl").exists()


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[PostgreSQLServer]:
    """One PostgreSQL 15 cluster for the session."""
    if not postgresql_installed():
        missing(f"PostgreSQL 15 ({POSTGRES_BIN}/initdb, pg_ctl)")
    with running_postgresql() as server:
        yield server


@pytest.fixture
def postgresql_url(
    postgresql_server: PostgreSQLServer, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh, empty database for this test (named after it, to debug); dropped afterwards."""
    name = database_name_for(request)
    yield postgresql_server.create_database(name)
    postgresql_server.drop_database(name)


def database_name_for(request: pytest.FixtureRequest) -> str:
    """A new database name for this test: its name, to debug, and a unique suffix."""
    readable = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    return f"t_{readable}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgresql_schema_template(postgresql_server: PostgreSQLServer) -> str:
    """A PostgreSQL database with the extension's tables, built once per session: the
    counterpart of ``sqlite_template`` (a copy of it costs no DDL, as a copy of the empty
    ``template1`` costs the same)."""
    name = "apikeys_schema_template"
    engine = sqlalchemy.create_engine(postgresql_server.create_database(name))
    metadata.create_all(engine)
    engine.dispose()  # nobody may be connected to a template while it is copied
    return name


@pytest.fixture
def postgresql_url_with_tables(
    postgresql_server: PostgreSQLServer,
    postgresql_schema_template: str,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """A fresh database of this test's own holding the extension's empty tables; dropped
    afterwards."""
    name = database_name_for(request)
    yield postgresql_server.create_database(name, template=postgresql_schema_template)
    postgresql_server.drop_database(name)


class RedisServer:
    """A throwaway redis-server that a test may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart, on the same port) and wait for PING; no-op if running."""
        if self.is_running():
            return
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                HOST,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up_or_dead, "Redis", self.log)

    def _up_or_dead(self) -> bool:
        """True once it answers PING; raise at once if it exited (say, the port was taken)."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            self.process = None
            raise RuntimeError(f"redis-server exited with {code}; log:\n{tail(self.log)}")
        return self.ping()

    def stop(self) -> None:
        """Stop the server, to simulate Redis going down; ``start()`` brings it back."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
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
        """Empty every database, so no test sees another's keys."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A throwaway redis-server on 127.0.0.1 (nothing persisted), removed on exit."""
    server = RedisServer(scratch_directory("apikeys-redis-"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session."""
    if shutil.which("redis-server") is None:
        missing("redis-server")
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, running (restarted if a test stopped it) and empty."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url


def script_calls(url: str) -> int:
    """How many Lua scripts the Redis at ``url`` ran since it started (``INFO commandstats``).

    An ``EVALSHA`` refused with ``NOSCRIPT`` (the script is not cached yet: a fresh or
    restarted server) ran nothing; the client sends it again as ``EVAL``, which is counted.
    """
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return sum(
            stats.get(f"cmdstat_{name}", {}).get("calls", 0)
            - stats.get(f"cmdstat_{name}", {}).get("failed_calls", 0)
            for name in ("evalsha", "eval")
        )
    finally:
        client.close()


# -- gunicorn --------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """``GET path`` on 127.0.0.1: the status, and which worker answered (``X-Worker-Pid``)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
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
            answered = list(pool.map(lambda _: get(port, "/health"), range(8)))
    except OSError:
        return False
    return len({pid for status, pid in answered if status == 200}) >= 2


@contextmanager
def gunicorn_workers(
    environment: dict[str, str], log: Path, *options: str, workers: int = 2
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``tests.gunicorn_app`` under gunicorn, 2 (or ``workers``) sync workers on a free port of
    127.0.0.1.

    Configured from ``environment`` (on top of ours), as in production; yields once both
    workers answer, and stops the server on exit (SIGTERM, then SIGKILL) if a test has not.
    """
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "sync"]
    command += ["-b", f"{HOST}:{port}", *options, "tests.gunicorn_app:app"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **environment},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: both_workers_answer(port), "two gunicorn workers", log)
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- Redis Cluster, Redis Sentinel, MariaDB ---------------------------------------------------


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s: a stuck server must not hang the end of the session."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def redis_answers(port: int, *command: str) -> str:
    """``redis-cli`` on 127.0.0.1:``port``: its output, or "" when the server does not answer."""
    done = subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *command],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return done.stdout if done.returncode == 0 else ""


def start_redis_process(workdir: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    """A redis-server (or, with ``--sentinel``, a sentinel) on 127.0.0.1:``port`` in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    process = subprocess.Popen(
        [
            "redis-server",
            *options,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}; log:\n{tail(log)}")
        return redis_answers(port, "PING").strip() == "PONG"

    wait_until(up, f"redis-server on port {port}", log)
    return process


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port + 10_000))
            except OSError:
                continue
        return port


@dataclass
class RedisClusterServer:
    """Three redis-server masters in cluster mode (no replicas), all slots covered."""

    ports: list[int]

    @property
    def url(self) -> str:
        """The ``limits`` storage URI: every node, so the client finds the cluster from any."""
        return "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in self.ports)

    def flush(self) -> None:
        for port in self.ports:
            redis_answers(port, "FLUSHALL")


@contextmanager
def running_redis_cluster(nodes: int = 3) -> Iterator[RedisClusterServer]:
    """A throwaway 3-node Redis Cluster on 127.0.0.1 (``redis-cli --cluster create``)."""
    workdir = scratch_directory("apikeys-redis-cluster-")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_cluster_port() for _ in range(nodes)]
        for port in ports:
            processes.append(
                start_redis_process(
                    workdir / str(port),
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / str(port) / "nodes.conf"),
                    "--cluster-node-timeout",
                    "5000",
                )
            )
        run(
            ["redis-cli", "--cluster", "create", *(f"{HOST}:{port}" for port in ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            "redis-cli --cluster create",
        )
        wait_until(
            lambda: all(
                "cluster_state:ok" in redis_answers(port, "CLUSTER", "INFO") for port in ports
            ),
            "Redis Cluster (cluster_state:ok on every node)",
            workdir / str(ports[0]) / "redis.log",
        )
        yield RedisClusterServer(ports)
    finally:
        for process in processes:
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class RedisSentinelServer:
    """A Redis master watched by one sentinel, under the service name ``apikeys``."""

    master_port: int
    sentinel_port: int
    service: str = "apikeys"

    @property
    def url(self) -> str:
        """The ``limits`` storage URI: the sentinel, which tells the client where the master is."""
        return f"redis+sentinel://{HOST}:{self.sentinel_port}/{self.service}"

    def flush(self) -> None:
        redis_answers(self.master_port, "FLUSHALL")


@contextmanager
def running_redis_sentinel() -> Iterator[RedisSentinelServer]:
    """A throwaway master and a sentinel (``redis-server --sentinel``) on 127.0.0.1."""
    workdir = scratch_directory("apikeys-redis-sentinel-")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        server = RedisSentinelServer(master_port=free_port(), sentinel_port=free_port())
        processes.append(start_redis_process(workdir / "master", server.master_port))
        sentinel_dir = workdir / "sentinel"
        sentinel_dir.mkdir()
        config = sentinel_dir / "sentinel.conf"  # a sentinel rewrites its config: it must own one
        config.write_text(
            f"sentinel monitor {server.service} {HOST} {server.master_port} 1\n"
            f"sentinel down-after-milliseconds {server.service} 5000\n"
        )
        processes.append(
            subprocess.Popen(
                [
                    "redis-server",
                    str(config),
                    "--sentinel",
                    "--bind",
                    HOST,
                    "--port",
                    str(server.sentinel_port),
                    "--dir",
                    str(sentinel_dir),
                    "--logfile",
                    str(sentinel_dir / "sentinel.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_until(
            lambda: (
                str(server.master_port)
                in redis_answers(
                    server.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", server.service
                )
            ),
            "Redis Sentinel (knows the master)",
            sentinel_dir / "sentinel.log",
        )
        yield server
    finally:
        for process in processes:
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[RedisClusterServer]:
    """One 3-node Redis Cluster for the session."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        missing("redis-server and redis-cli (Redis Cluster)")
    with running_redis_cluster() as server:
        yield server


@pytest.fixture
def redis_cluster_url(redis_cluster_server: RedisClusterServer) -> str:
    """The session's Redis Cluster, empty."""
    redis_cluster_server.flush()
    return redis_cluster_server.url


@pytest.fixture(scope="session")
def redis_sentinel_server() -> Iterator[RedisSentinelServer]:
    """One Redis master and sentinel for the session."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        missing("redis-server and redis-cli (Redis Sentinel)")
    with running_redis_sentinel() as server:
        yield server


@pytest.fixture
def redis_sentinel_url(redis_sentinel_server: RedisSentinelServer) -> str:
    """The session's Redis Sentinel deployment, empty."""
    redis_sentinel_server.flush()
    return redis_sentinel_server.url


MARIADB_BIN = Path(os.environ.get("MARIADB_BIN", "/usr/sbin"))


@dataclass
class MariaDBServer:
    """A running throwaway MariaDB on 127.0.0.1, without grant tables (anyone is root)."""

    host: str
    port: int

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@{self.host}:{self.port}/{database}?charset=utf8mb4"

    def _admin(self, statement: str) -> None:
        import pymysql

        connection = pymysql.connect(
            host=self.host, port=self.port, user="root", connect_timeout=5, autocommit=True
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def create_database(self, name: str) -> str:
        """Create an empty database (``name`` is ours: letters, digits, ``_``)."""
        self._admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS `{name}`")

    def accepts_connections(self) -> bool:
        try:
            self._admin("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure here means "not yet"
            return False
        return True


def mariadb_installed() -> bool:
    return (MARIADB_BIN / "mariadbd").exists() and shutil.which("mariadb-install-db") is not None


@contextmanager
def running_mariadb() -> Iterator[MariaDBServer]:
    """A throwaway MariaDB (Debian's mariadb-server) on 127.0.0.1, without durability."""
    workdir = scratch_directory("apikeys-mariadb-")
    data, log = workdir / "data", workdir / "server.log"
    # A temporary directory of its own: a starting server deletes every "#sql*" file in its
    # tmpdir, which in a shared /tmp are another xdist worker's server's tables being built.
    scratch = workdir / "tmp"
    scratch.mkdir()
    # mariadbd refuses to run as root unless told which user to be.
    user = "root" if os.geteuid() == 0 else getpass.getuser()
    process = None
    try:
        run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--user={user}",
                f"--datadir={data}",
                f"--tmpdir={scratch}",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
            "mariadb-install-db",
        )
        port = free_port()
        process = subprocess.Popen(
            [
                str(MARIADB_BIN / "mariadbd"),
                "--no-defaults",
                f"--user={user}",
                f"--datadir={data}",
                f"--tmpdir={scratch}",
                f"--bind-address={HOST}",
                f"--port={port}",
                f"--socket={workdir / 'mariadb.sock'}",
                f"--pid-file={workdir / 'mariadb.pid'}",
                f"--log-error={log}",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--max-connections=200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = MariaDBServer(host=HOST, port=port)

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {process.returncode}; log:\n{tail(log)}")
            return server.accepts_connections()

        wait_until(up, "MariaDB", log)
        yield server
    finally:
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One MariaDB for the session."""
    if not mariadb_installed():
        missing(
            f"MariaDB ({MARIADB_BIN}/mariadbd, mariadb-install-db; apt-get install mariadb-server)"
        )
    pytest.importorskip("pymysql", reason="PyMySQL is not installed (pip install -e '.[test]')")
    with running_mariadb() as server:
        yield server


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test; dropped afterwards."""
    readable = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:30]
    name = f"t_{readable}_{uuid.uuid4().hex[:12]}"
    yield mariadb_server.create_database(name)
    mariadb_server.drop_database(name)
