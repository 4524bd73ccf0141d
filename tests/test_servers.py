"""The real servers the suite relies on are real, isolated and controllable."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa

from .servers import RedisServer


@pytest.mark.postgres
def test_postgresql_fixture_is_a_real_postgresql_15(postgresql_url: str) -> None:
    engine = sa.create_engine(postgresql_url)
    with engine.connect() as connection:
        version = connection.scalar(sa.text("SELECT version()"))
        connection.execute(sa.text("CREATE TABLE marker (id int)"))
        connection.commit()
    engine.dispose()
    assert version.startswith("PostgreSQL 15")


@pytest.mark.postgres
def test_each_test_gets_an_empty_database(postgresql_url: str) -> None:
    engine = sa.create_engine(postgresql_url)
    with engine.connect() as connection:
        tables = connection.scalar(
            sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        )
    engine.dispose()
    assert tables == 0


@pytest.mark.redis
def test_redis_can_be_stopped_and_started_on_the_same_port(
    redis_server: RedisServer, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5)
    client.set("k", "v")
    assert client.get("k") == b"v"
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.start()
    assert client.ping() and redis_server.url == redis_url
    client.close()
