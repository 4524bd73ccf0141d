"""usage/single_rollups.py: groups of one request, upserted by a statement naming only their
histogram bucket, store the rollup rows the general upsert stores."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from flask_apikeys.models import (
    LATENCY_BUCKET_COLUMNS,
    LATENCY_BUCKET_EDGES_MS,
    NO_ERROR_CODE,
    APIKeyUsageRollup,
    Base,
    Organization,
)
from flask_apikeys.usage import rollups as rollups_module
from flask_apikeys.usage.rollups import HOUR, write_rollups
from flask_apikeys.usage.single_rollups import (
    ROWS_PER_STATEMENT,
    multi_row_sql,
    single_request_upsert,
)
from tests.test_usage_rollups import (
    assert_same_sums,
    bucket_of,
    days_from_hours,
    over_every_key,
    stored_rollups,
)

rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]
ORGANIZATIONS = [uuid.UUID(int=number << 64 | 7) for number in (3, 11)]
KEYS = [uuid.uuid4() for _ in range(6)]
#: Two hours before midnight: a batch spans hours of two days.
START = datetime(2026, 3, 1, 22, tzinfo=UTC).timestamp()
#: Latencies on, just under and between the histogram's edges, and past the last one.
LATENCIES = sorted(
    {0.0, *LATENCY_BUCKET_EDGES_MS, *(edge - 0.001 for edge in LATENCY_BUCKET_EDGES_MS), 1e6}
)

queued_rows = st.tuples(
    st.sampled_from(KEYS),
    st.sampled_from(ORGANIZATIONS),
    st.floats(0, 3 * HOUR - 1).map(lambda offset: START + offset),
    st.sampled_from(["/v1/a", "/v1/b/<id>"]),
    st.sampled_from(["GET", "POST"]),
    st.sampled_from([200, 201, 404, 429, 500]),
    st.one_of(st.sampled_from(LATENCIES), st.floats(0, 2e4).map(lambda ms: round(ms, 3))),
    st.sampled_from([None, 0, 7, 1200]),
    st.sampled_from([None, 0.0, 0.25, 0.000125]),
).map(
    lambda row: (
        *row,
        "127.0.0.1",
        "tests/1.0",
        None if row[5] < 400 else "refused",
        None if row[5] < 400 else ("rate_limited" if row[5] == 429 else None),
    )
)
#: One to three flushes: later ones add to the rows earlier ones created.
flushes = st.lists(st.lists(queued_rows, min_size=1, max_size=25), min_size=1, max_size=3)
examples = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def every_column(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """Every stored rollup row but its id, sorted."""
    columns = [column for column in rollups.c if column.name != "id"]
    with engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(sa.select(*columns)))


def expected_hours(batches: list[list[tuple[Any, ...]]]) -> dict[Any, list[Any]]:
    """Per key's hour group, the queued rows' sums, counted here rather than by the writer."""
    sums: dict[Any, list[Any]] = {}
    for row in (row for batch in batches for row in batch):
        key_id, organization_id, moment, endpoint, method, status, elapsed, tokens, cost = row[:9]
        hour = datetime.fromtimestamp(moment // HOUR * HOUR, UTC)
        code = row[12] or NO_ERROR_CODE
        group = (organization_id, key_id, hour, method, endpoint, status // 100, code)
        total = sums.setdefault(group, [0, 0, 0.0, 0, 0.0, [0] * len(LATENCY_BUCKET_COLUMNS)])
        total[0] += 1
        total[1] += 1 if status >= 400 else 0
        total[2] += elapsed
        total[3] += tokens or 0
        total[4] += cost or 0.0
        total[5][bucket_of(elapsed)] += 1
    return sums


@pytest.fixture
def sqlite_engines(tmp_path: Path) -> Iterator[list[sa.Engine]]:
    engines = [sa.create_engine(f"sqlite:///{tmp_path / name}.sqlite") for name in "ab"]
    for engine in engines:
        rollups.create(engine)
    yield engines
    for engine in engines:
        engine.dispose()


def write_both_ways(
    batch: Any, specialised: sa.Engine, general: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write ``batch``'s rollups on ``specialised`` as a flush does (one-request statements
    included), and on ``general`` with the general upsert alone."""
    with specialised.begin() as connection:
        write_rollups(connection, batch)
    with monkeypatch.context() as patched:
        patched.setattr(rollups_module, "_singles_prepared", lambda _dialect: False)
        with general.begin() as connection:
            write_rollups(connection, batch)


@examples
@given(batches=flushes)
def test_one_request_upserts_store_what_the_general_upsert_stores(
    sqlite_engines: list[sa.Engine], monkeypatch: pytest.MonkeyPatch, batches: Any
) -> None:
    """Random flushes, some adding to rows earlier flushes created, through the one-request
    statements on one SQLite database and through the general upsert only on another: every
    column of every rollup row is the same."""
    specialised, general = sqlite_engines
    seen: list[str] = []

    def record(_c: Any, _cursor: Any, statement: str, _p: Any, _x: Any, _many: bool) -> None:
        seen.append(statement)

    sa.event.listen(specialised, "before_cursor_execute", record)
    try:
        for engine in sqlite_engines:
            with engine.begin() as connection:
                connection.execute(rollups.delete())
        for batch in batches:
            write_both_ways(batch, specialised, general, monkeypatch)
    finally:
        sa.event.remove(specialised, "before_cursor_execute", record)
    assert every_column(specialised) == every_column(general)
    # A key's hour group of one request went through a statement naming its bucket.
    if any(sums[0] == 1 for batch in batches for sums in expected_hours([batch]).values()):
        assert any("+ 1)" in statement for statement in seen)


@pytest.fixture
def backend_engine(backend_url: str) -> Iterator[sa.Engine]:
    """The extension's tables on the backend, with the two organizations the rows name."""
    engine = sa.create_engine(backend_url)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(rollups.delete())
        for number, organization_id in enumerate(ORGANIZATIONS):
            connection.execute(
                sa.insert(Organization.__table__),  # type: ignore[arg-type]
                {
                    "id": organization_id,
                    "name": f"Organization {number}",
                    "slug": f"organization-{number}-{uuid.uuid4().hex[:8]}",
                    "email": "billing@example.com",
                    "plan": "free",
                },
            )
    yield engine
    engine.dispose()


@pytest.mark.slow  # Hypothesis examples of whole flushes, on each database: seconds
@examples
@given(batches=flushes)
def test_rollups_of_random_flushes_are_the_sums_of_their_rows(
    backend_engine: sa.Engine, batches: Any
) -> None:
    """On every backend (SQLite through the one-request statements, the others through the
    general upsert): hour and day rows, per key and over every key, are the rows' sums."""
    with backend_engine.begin() as connection:
        connection.execute(rollups.delete())
    for batch in batches:
        with backend_engine.begin() as connection:
            write_rollups(connection, batch)
    expected = expected_hours(batches)
    with backend_engine.connect() as connection:
        assert_same_sums(stored_rollups(connection, "hour"), expected)
        assert_same_sums(stored_rollups(connection, "day"), days_from_hours(expected))
        assert_same_sums(stored_rollups(connection, "hour", True), over_every_key(expected))
        assert_same_sums(
            stored_rollups(connection, "day", True), over_every_key(days_from_hours(expected))
        )


def test_many_cold_keys_go_in_multi_row_statements_that_store_the_same(
    sqlite_engines: list[sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty-eight keys with one request each in one bucket, twice (the second flush adds to the
    rows the first created), and four with two: chunks of ``ROWS_PER_STATEMENT`` rows in one
    statement, the rest one by one, every column as through the general upsert."""
    specialised, general = sqlite_engines
    keys = [uuid.uuid4() for _ in range(42)]
    moment = START + 600
    batch = [
        (key, ORGANIZATIONS[0], moment, "/v1/a", "GET", 200, 4.5, None, None)
        + ("127.0.0.1", "tests/1.0", None, None)
        for key in [*keys, *keys[:4]]
    ]
    seen: list[str] = []

    def record(_c: Any, _cursor: Any, statement: str, _p: Any, _x: Any, _many: bool) -> None:
        seen.append(statement)

    sa.event.listen(specialised, "before_cursor_execute", record)
    for _ in range(2):
        write_both_ways(batch, specialised, general, monkeypatch)
    sa.event.remove(specialised, "before_cursor_execute", record)
    assert every_column(specialised) == every_column(general)
    multi_row = [text for text in seen if text.count("latency_bucket_03 + 1") == 1]
    assert any(text.count("VALUES (") == 1 and "), (" in text for text in multi_row)
    assert any("), (" not in text for text in multi_row)


@pytest.mark.parametrize("with_amounts", [False, True])
def test_a_multi_row_upsert_is_the_statement_sqlalchemy_compiles(with_amounts: bool) -> None:
    """The multi-row statements are made from the one-row statement's SQL (compiling 16 rows
    per bucket made each process's first flush ~0.3 s slower): for every bucket, the text
    SQLAlchemy itself compiles for that many rows."""
    dialect = sqlite.dialect()
    for bucket in range(len(LATENCY_BUCKET_COLUMNS)):
        compiled = single_request_upsert(bucket, with_amounts, ROWS_PER_STATEMENT).compile(
            dialect=dialect
        )
        assert multi_row_sql(dialect, bucket, with_amounts) == compiled.string
