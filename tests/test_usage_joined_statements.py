"""A flush's statements over many rows at once: the key counters joined with their values
(``usage/key_counters.py``: SQLite 3.33+, PostgreSQL) and PostgreSQL's rollups from arrays
(``usage/array_rollups.py``) store exactly what the statement per key and per row stores, and
a cursor listener on the engine sees them."""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_apikeys import APIKeys
from flask_apikeys.models import APIKey, APIKeyUsageRollup
from flask_apikeys.usage import insert as insert_module
from flask_apikeys.usage import rollups as rollups_module
from flask_apikeys.usage.insert import InsertPlan
from flask_apikeys.usage.key_counters import KEYS_PER_STATEMENT, joined_update
from flask_apikeys.usage.rollups import write_rollups
from flask_apikeys.usage.writer import _ADD_REQUESTS
from tests.test_usage_rollups import engine_of, key_ids, synthetic_row

keys_table: sa.Table = APIKey.__table__  # type: ignore[assignment]
rollups_table: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]
EARLIER = datetime(2026, 3, 1, 8, tzinfo=UTC)
LATER = datetime(2026, 3, 1, 23, tzinfo=UTC)
NOON = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
#: A key's counters before the flush: none yet, an earlier last use, a later one.
STARTS = (None, EARLIER, LATER)
COUNTERS = (keys_table.c.total_requests, keys_table.c.last_used_at, keys_table.c.last_request_at)


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def template_key(app: Flask, apikeys: APIKeys, make_key: Callable[..., str]) -> Any:
    """A key of the test's database to clone: the first one made (examples share the app)."""
    with engine_of(app).connect() as connection:
        found = connection.execute(sa.select(keys_table.c.id).limit(1)).scalar()
    return found if found is not None else key_ids(app, apikeys, make_key())[0]


def cloned_keys(engine: sa.Engine, template: uuid.UUID, starts: list[datetime | None]) -> list[Any]:
    """Keys made in one statement from the ``template`` key's row, one per start (their last
    use), with 5 requests counted each."""
    with engine.begin() as connection:
        row = dict(
            connection.execute(sa.select(keys_table).filter_by(id=template)).mappings().one()
        )
        clones = [
            {
                **row,
                "id": uuid.uuid4(),
                "key_hash": secrets.token_hex(32),
                "last_used_at": start,
                "total_requests": 5,
            }
            for start in starts
        ]
        connection.execute(sa.insert(keys_table), clones)
    return [clone["id"] for clone in clones]


def counters(engine: sa.Engine, ids: list[Any]) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        stored = {
            row[0]: tuple(row[1:])
            for row in connection.execute(
                sa.select(keys_table.c.id, *COUNTERS).where(keys_table.c.id.in_(ids))
            )
        }
    return [stored[key_id] for key_id in ids]


@contextmanager
def statements_seen(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*arguments: Any) -> None:
        seen.append(arguments[2])

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def add_requests(engine: sa.Engine, keys: list[tuple[Any, int, float]]) -> None:
    with engine.begin() as connection:
        InsertPlan(engine.dialect).add_requests(connection, _ADD_REQUESTS, keys)


#: Per key: its start (an index of STARTS), its requests, its last request's time from noon.
key_flushes = st.lists(
    st.tuples(
        st.integers(0, len(STARTS) - 1),
        st.integers(1, 10**6),
        st.floats(-43_000, 43_000, allow_nan=False),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flushed=key_flushes)
def test_key_counters_joined_in_one_statement_store_what_one_statement_per_key_stores(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], flushed: list[Any]
) -> None:
    """Pairs of keys with the same counters get the same requests and times, one of each pair
    in the joined statement(s) and the other through the statement per key: the same totals
    and times stored, and no last use moved back."""
    engine = engine_of(app)
    template = template_key(app, apikeys, make_key)
    starts = [STARTS[start] for start, _, _ in flushed]
    joined, general = cloned_keys(engine, template, starts), cloned_keys(engine, template, starts)
    moments = [NOON + offset for _, _, offset in flushed]
    counts = [count for _, count, _ in flushed]
    add_requests(engine, list(zip(joined, counts, moments, strict=True)))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(insert_module, "joined_update", lambda dialect: None)
        add_requests(engine, list(zip(general, counts, moments, strict=True)))
    assert counters(engine, joined) == counters(engine, general)
    for (total, last_used, _), start, count in zip(
        counters(engine, joined), starts, counts, strict=True
    ):
        assert total == 5 + count
        assert start is None or last_used >= start


def test_a_flush_of_many_keys_updates_their_counters_in_a_few_joined_statements(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    """300 keys: on SQLite one statement of 256 keys, then 16 at a time, then the statement
    per key for the rest; on PostgreSQL one statement. The engine's listener sees them all,
    and every key is counted."""
    engine = engine_of(app)
    if engine.dialect.name not in ("sqlite", "postgresql"):
        pytest.skip(f"{engine.dialect.name} updates one key per statement")
    method = joined_update(engine.dialect)
    template = key_ids(app, apikeys, make_key())[0]
    ids = cloned_keys(engine, template, [None] * 300)
    with statements_seen(engine) as seen:
        add_requests(engine, [(key_id, 2, NOON) for key_id in ids])
    if method == "values":
        joined = [statement for statement in seen if "FROM (VALUES" in statement]
        assert [statement.count("(?, ?, ?)") for statement in joined] == [KEYS_PER_STATEMENT, 16]
        assert len(seen) == 3  # and one executemany of the per-key statement for the last 12
    else:
        assert len(seen) == 1 and "unnest" in seen[0]
    assert {total for total, _, _ in counters(engine, ids)} == {7}


def test_sqlite_before_3_33_updates_each_key_on_its_own(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``UPDATE … FROM`` came with SQLite 3.33: an older library linked by Python's sqlite3
    gets the statement per key, and the same counters."""
    engine = engine_of(app)
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's version only")
    monkeypatch.setattr(engine.dialect.loaded_dbapi, "sqlite_version_info", (3, 32, 3))
    assert joined_update(engine.dialect) is None
    template = key_ids(app, apikeys, make_key())[0]
    ids = cloned_keys(engine, template, [None] * 20)
    with statements_seen(engine) as seen:
        add_requests(engine, [(key_id, 3, NOON) for key_id in ids])
    assert len(seen) == 1 and "VALUES" not in seen[0]
    assert {total for total, _, _ in counters(engine, ids)} == {8}


def stored_rollups(engine: sa.Engine) -> list[tuple[Any, ...]]:
    columns = [column for column in rollups_table.c if column.name != "id"]
    with engine.connect() as connection:
        return sorted(
            (tuple(row) for row in connection.execute(sa.select(*columns))),
            key=repr,
        )


def write(engine: sa.Engine, rows: list[tuple[Any, ...]], *, arrays: bool) -> None:
    with pytest.MonkeyPatch.context() as patched:
        if not arrays:
            patched.setattr(rollups_module, "unnest_upsert", lambda dialect: False)
        with engine.begin() as connection:
            write_rollups(connection, rows)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 120), keys=st.integers(1, 30))
def test_postgresql_rollups_from_arrays_store_what_the_upsert_per_row_stores(
    app: Flask, organization: Any, seed: int, count: int, keys: int
) -> None:
    """The same flushes (new rows, then rows added to them on conflict) written from arrays in
    one statement and by the upsert per row leave the same rollup rows."""
    engine = engine_of(app)
    if not rollups_module.unnest_upsert(engine.dialect):
        pytest.skip(f"{engine.dialect.name} upserts one rollup row per execution")
    chooser = random.Random(seed)
    key_list = [uuid.uuid4() for _ in range(keys)]
    flushes = [
        [
            synthetic_row(
                chooser.choice(key_list),
                organization,
                NOON + chooser.uniform(0, 30 * 3600),
                chooser,
            )
            for _ in range(count)
        ]
        for _ in range(2)
    ]
    results = []
    for arrays in (True, False):
        with engine.begin() as connection:
            connection.execute(sa.delete(rollups_table))
        for rows in flushes:
            write(engine, rows, arrays=arrays)
        results.append(stored_rollups(engine))
    assert results[0] == results[1]
    assert results[0]


def test_postgresql_rollups_of_a_flush_go_in_one_statement_the_listener_sees(
    app: Flask, organization: Any
) -> None:
    engine = engine_of(app)
    if engine.dialect.name != "postgresql":
        pytest.skip(f"{engine.dialect.name} upserts one rollup row per execution")
    chooser = random.Random(3)
    rows = [synthetic_row(uuid.uuid4(), organization, NOON, chooser) for _ in range(50)]
    with statements_seen(engine) as seen, engine.begin() as connection:
        write_rollups(connection, rows)
    assert len(seen) == 1 and "unnest" in seen[0] and "ON CONFLICT" in seen[0]
    with engine.connect() as connection:
        hours = connection.execute(
            sa.select(sa.func.sum(rollups_table.c.requests)).where(
                rollups_table.c.granularity == "hour"
            )
        ).scalar_one()
    assert hours == 2 * len(rows)  # each key's hour, and the organization's (all keys)
