"""The real servers the suite relies on are real, isolated and controllable."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa

from .servers import PostgreSQLServer, RedisServer, missing

seen_databases: set[str] = set()


def current_database(url: str) -> tuple[str, int]:
    """This URL's database name and how many tables it holds."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            name = connection.scalar(sa.text("SELECT current_database()"))
            tables = connection.scalar(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            )
            connection.execute(sa.text("CREATE TABLE marker (id int)"))
            connection.commit()
    finally:
        engine.dispose()
    return name, tables


@pytest.mark.postgres
def test_postgresql_fixture_is_a_real_postgresql_15(
    postgresql_server: PostgreSQLServer, postgresql_url: str
) -> None:
    engine = sa.create_engine(postgresql_url)
    with engine.connect() as connection:
        version = connection.scalar(sa.text("SELECT version()"))
    engine.dispose()
    assert "PostgreSQL 15" in version
    assert postgresql_server.host == "127.0.0.1"
    server_url = f"postgresql+psycopg://postgres@127.0.0.1:{postgresql_server.port}/"
    assert postgresql_url.startswith(server_url)
    assert postgresql_server.base_url.endswith(f":{postgresql_server.port}/postgres")


@pytest.mark.postgres
@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_its_own_empty_database(postgresql_url: str, run: str) -> None:
    name, tables = current_database(postgresql_url)
    assert tables == 0, "a table another test created is visible"
    assert name not in seen_databases
    seen_databases.add(name)


@pytest.mark.postgres
def test_a_dropped_database_is_gone(postgresql_server: PostgreSQLServer) -> None:
    url = postgresql_server.create_database("t_dropped_explicitly")
    engine = sa.create_engine(url)
    connection = engine.connect()
    connection.scalar(sa.text("SELECT 1"))
    postgresql_server.drop_database("t_dropped_explicitly")  # WITH (FORCE) ends that session
    with pytest.raises(sa.exc.OperationalError):
        connection.scalar(sa.text("SELECT 1"))
    engine.dispose()
    with pytest.raises(sa.exc.OperationalError, match="does not exist"):
        sa.create_engine(url).connect()


@pytest.mark.redis
def test_redis_set_and_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.get("k") is None, "the database was not flushed"
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()


@pytest.mark.redis
def test_redis_can_be_stopped_and_started_on_the_same_port(
    redis_server: RedisServer, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5)
    client.set("k", "v")
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.start()
    assert client.ping() and redis_server.url == redis_url
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("step", ["leaves it down", "finds it running"])
def test_redis_url_restarts_a_server_a_previous_test_left_down(
    redis_server: RedisServer, redis_url: str, step: str
) -> None:
    assert redis_server.ping()
    if step == "leaves it down":
        redis_server.stop()


def test_missing_binary_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        missing("redis-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must not be skipped"):
        missing("redis-server")
