"""usage/prepared.py: a flush's executemany without SQLAlchemy's per-row work stores the same."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_apikeys.models import ALL_KEYS, NO_ERROR_CODE, APIKeyUsageRollup
from flask_apikeys.usage import rollups as rollups_module
from flask_apikeys.usage.prepared import execute_many
from flask_apikeys.usage.rollups import (
    ADDED_COLUMNS,
    GROUP_COLUMNS,
    HOUR,
    ROW_COLUMNS,
    SUM_COLUMNS,
    _parameters,
    _tuples,
    upsert_statement,
    write_rollups,
)
from tests.test_usage_rollups import synthetic_row

rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]


def rollup_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Rollup parameters as a flush makes them: many keys, few buckets, some repeated groups."""
    chooser = random.Random(seed)
    organizations = [uuid.uuid4() for _ in range(3)]
    keys = [uuid.uuid4() for _ in range(count // 2)] + [ALL_KEYS]
    start = datetime(2026, 3, 1, 10, tzinfo=UTC)
    buckets = [start, start + timedelta(hours=1), start.astimezone(timezone(timedelta(hours=2)))]
    rows = []
    for _ in range(count):
        row: dict[str, Any] = {
            "organization_id": chooser.choice(organizations),
            "api_key_id": chooser.choice(keys),
            "granularity": chooser.choice(["hour", "day"]),
            "bucket_start": chooser.choice(buckets),
            "method": chooser.choice(["GET", "POST"]),
            "endpoint": chooser.choice(["/r", "/items/<int:id>"]),
            "status_class": chooser.choice([2, 4, 5]),
            "error_code": chooser.choice([NO_ERROR_CODE, "rate_limited"]),
        }
        for name in ADDED_COLUMNS:
            row[name] = chooser.randint(0, 9)
        row["latency_sum_ms"] = chooser.uniform(0, 500)
        row["cost_usd"] = chooser.choice([0, 0.25, 1, 1e-6])
        rows.append(row)
    return rows


def stored(engine: sa.Engine) -> list[tuple[Any, ...]]:
    columns = ["granularity", *GROUP_COLUMNS, *ADDED_COLUMNS]
    with engine.connect() as connection:
        found = connection.execute(sa.select(*(rollups.c[name] for name in columns))).all()
    return sorted(tuple(row) for row in found)


def test_prepared_upserts_store_what_sqlalchemy_stores(tmp_path: Path) -> None:
    """The same rollup rows, twice (so the second round adds on conflict), through
    ``execute_many`` on one SQLite database and through SQLAlchemy on another: the same rows."""
    engines = [sa.create_engine(f"sqlite:///{tmp_path / name}.sqlite") for name in "ab"]
    for engine in engines:
        rollups.create(engine)
    statement = upsert_statement("sqlite")
    assert statement is not None
    for seed in (1, 2):
        rows = rollup_rows(400, seed)
        with engines[0].begin() as connection:
            execute_many(connection, statement, rows)
        with engines[1].begin() as connection:
            connection.execute(statement, rows)
    prepared, through_sqlalchemy = stored(engines[0]), stored(engines[1])
    assert len(prepared) > 100
    assert prepared == through_sqlalchemy
    # The aware bucket at +02:00 was stored as its UTC hour, as SQLAlchemy stores it.
    assert {row[1 + GROUP_COLUMNS.index("bucket_start")].hour for row in prepared} == {10, 11}
    for engine in engines:
        engine.dispose()


def test_cursor_listeners_see_the_prepared_rows(tmp_path: Path) -> None:
    """The rows go through ``exec_driver_sql``: tracing and query counting still see them."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'seen.sqlite'}")
    rollups.create(engine)
    seen: list[tuple[str, bool]] = []

    def record(_c: Any, _cursor: Any, statement: str, _p: Any, _x: Any, many: bool) -> None:
        seen.append((statement, many))

    sa.event.listen(engine, "before_cursor_execute", record)
    statement = upsert_statement("sqlite")
    assert statement is not None
    with engine.begin() as connection:
        execute_many(connection, statement, rollup_rows(10, 3))
    assert [many for text, many in seen if "api_key_usage_rollups" in text] == [True]
    engine.dispose()


def test_a_flush_of_tuples_stores_what_a_flush_of_dicts_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_rollups`` on SQLite builds the rollup rows as the driver's tuples; the same
    queued rows through the dicts other dialects get (SQLAlchemy's bind processors) store the
    same sums, twice (the second flush adds on conflict): many keys, equal ids held by
    different objects, three organizations, hours of two days, errors, tokens and costs."""
    chooser = random.Random(5)
    organizations = [uuid.uuid4() for _ in range(3)]
    keys = [(uuid.uuid4(), chooser.choice(organizations)) for _ in range(150)]
    start = datetime(2026, 3, 1, 22, 30, tzinfo=UTC).timestamp()
    queued = []
    for _ in range(600):
        key_id, organization_id = chooser.choice(keys)
        if chooser.random() < 0.3:  # the same ids, other objects (as from another request)
            key_id, organization_id = uuid.UUID(str(key_id)), uuid.UUID(str(organization_id))
        moment = start + chooser.uniform(0, 3 * HOUR)
        queued.append(synthetic_row(key_id, organization_id, moment, chooser))
    engines = [sa.create_engine(f"sqlite:///{tmp_path / name}.sqlite") for name in "ab"]
    for engine in engines:
        rollups.create(engine)
    for half in (queued[:300], queued[300:]):
        with engines[0].begin() as connection:
            write_rollups(connection, half)
        with monkeypatch.context() as patched:
            patched.setattr(rollups_module, "PREPARED_DIALECTS", frozenset())
            with engines[1].begin() as connection:
                write_rollups(connection, half)
    as_tuples, as_dicts = stored(engines[0]), stored(engines[1])
    assert {row[0] for row in as_tuples} == {"hour", "day"}
    requests = 1 + len(GROUP_COLUMNS) + ADDED_COLUMNS.index("requests")
    assert sum(row[requests] for row in as_tuples if row[0] == "day") == 2 * 600
    assert as_tuples == as_dicts
    for engine in engines:
        engine.dispose()


def test_groups_are_written_in_the_order_of_their_ids_text() -> None:
    """Every process takes its row locks in one order: ids ordered by number, which is the
    order of their text (what earlier versions sorted by), so mixed versions agree."""
    organizations = [uuid.uuid4() for _ in range(50)]
    groups = {
        (organization, key, 7, "GET", "/r", 2, NO_ERROR_CODE): [1]
        for organization in organizations
        for key in [uuid.uuid4(), ALL_KEYS]
    }
    ids = {uuid.int: uuid for uuid in [*organizations, *(group[1] for group in groups)]}
    by_numbers = {
        (organization.int, key.int, *rest): sums + [0] * (len(SUM_COLUMNS) - len(sums))
        for (organization, key, *rest), sums in groups.items()
    }
    in_dicts = [
        (row["organization_id"], row["api_key_id"])
        for row in _parameters("hour", HOUR, by_numbers, ids)
    ]
    texts = {number: str(value) for number, value in ids.items()}
    organization, key = ROW_COLUMNS.index("organization_id"), ROW_COLUMNS.index("api_key_id")
    in_tuples = [
        (row[organization], row[key])
        for row in _tuples("hour", HOUR, by_numbers, (texts, texts), str, ())
    ]
    assert in_dicts == sorted(in_dicts, key=lambda ids: (str(ids[0]), str(ids[1])))
    assert in_tuples == sorted(in_tuples)
    assert in_tuples == [(str(first), str(second)) for first, second in in_dicts]


class CountedText(sa.TypeDecorator[str]):
    """Text whose bind conversion counts its calls (a real SQLAlchemy type, not a mock)."""

    impl = sa.String
    cache_ok = True
    calls = 0

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        CountedText.calls += 1
        return None if value is None else value.upper()


def test_a_parameter_bound_at_several_positions_is_converted_once_per_row(
    tmp_path: Path,
) -> None:
    """A key's last use is compared and then stored (three positions, one value): converted
    once per row, and stored as SQLAlchemy stores it."""
    table = sa.Table(
        "seen", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last", CountedText(20)), sa.Column("first", CountedText(20)),
    )  # fmt: skip
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'seen.sqlite'}")
    table.metadata.create_all(engine)
    seen = sa.bindparam("seen", type_=CountedText(20))
    statement = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("row_id"))
        .values(
            last=sa.case(
                (sa.or_(table.c.last.is_(None), table.c.last < seen), seen), else_=table.c.last
            ),
            first=seen,
        )
    )
    with engine.begin() as connection:
        connection.execute(sa.insert(table), [{"id": n, "last": "b"} for n in range(1, 4)])
    rows = [{"row_id": n, "seen": text} for n, text in zip(range(1, 4), "acz", strict=True)]
    CountedText.calls = 0
    with engine.begin() as connection:
        execute_many(connection, statement, rows)
    assert CountedText.calls == len(rows)
    with engine.connect() as connection:
        found = connection.execute(sa.select(table).order_by(table.c.id)).all()
    assert [tuple(row) for row in found] == [(1, "B", "A"), (2, "C", "C"), (3, "Z", "Z")]
    engine.dispose()
