"""usage/insert.py's ``add_requests``: a flush's key counters, made as the driver's own
parameters on SQLite, store exactly what SQLAlchemy's conversions store."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.models import APIKey
from flask_apikeys.usage import insert as insert_module
from flask_apikeys.usage.insert import InsertPlan
from flask_apikeys.usage.writer import _ADD_REQUESTS
from tests.test_usage_rollups import engine_of, key_ids

keys_table: sa.Table = APIKey.__table__  # type: ignore[assignment]
#: Stored last uses to start from: none, long ago, later than the flush's times.
EARLIER = datetime(2026, 3, 1, 8, tzinfo=UTC)
LATER = datetime(2026, 3, 1, 23, tzinfo=UTC)


def stored_texts(engine: sa.Engine, key_id: uuid.UUID) -> tuple[object, ...]:
    """The counters as SQLite holds them (text, not what SQLAlchemy reads back)."""
    with engine.connect() as connection:
        return tuple(
            connection.exec_driver_sql(
                "SELECT total_requests, last_used_at, last_request_at FROM api_keys WHERE id = ?",
                (key_id.hex,),
            ).one()
        )


def test_key_counters_as_driver_parameters_store_what_sqlalchemy_stores(
    app: Flask,
    apikeys: APIKeys,
    make_key: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pairs of keys with the same stored counters (none yet, an earlier and a later last
    use) get the same requests and times, one key of each pair through the driver's
    parameters and the other through ``execute_many``: the same text stored, and the last
    use never moved back."""
    engine = engine_of(app)
    chooser = random.Random(11)
    pairs = [
        (key_ids(app, apikeys, make_key())[0], key_ids(app, apikeys, make_key())[0])
        for _ in range(3)
    ]
    starts = [None, EARLIER, LATER]
    with engine.begin() as connection:
        for (first, second), start in zip(pairs, starts, strict=True):
            connection.execute(
                sa.update(keys_table)
                .where(keys_table.c.id.in_([first, second]))
                .values(last_used_at=start, total_requests=5)
            )
    moments = [
        datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp() + chooser.uniform(0, 3600) for _ in pairs
    ]
    moments[0] = datetime(2026, 3, 1, 12, 0, 0, 999999, tzinfo=UTC).timestamp()
    plan = InsertPlan(engine.dialect)
    assert plan.iso_text  # SQLite: the driver's own parameters
    counts = [chooser.randint(1, 40) for _ in pairs]
    with engine.begin() as connection:
        plan.add_requests(
            connection,
            _ADD_REQUESTS,
            [
                (first, count, moment)
                for (first, _), count, moment in zip(pairs, counts, moments, strict=True)
            ],
        )
    with monkeypatch.context() as patched:
        patched.setattr(insert_module, "PREPARED_DIALECTS", frozenset())
        with engine.begin() as connection:
            plan.add_requests(
                connection,
                _ADD_REQUESTS,
                [
                    (second, count, moment)
                    for (_, second), count, moment in zip(pairs, counts, moments, strict=True)
                ],
            )
    raw_texts = plan.columns(
        [(uuid.uuid4(), uuid.uuid4(), moment) + (None,) * 10 for moment in moments]
    )[2]
    for (first, second), count, start, raw_text in zip(
        pairs, counts, starts, raw_texts, strict=True
    ):
        fast, general = stored_texts(engine, first), stored_texts(engine, second)
        assert fast[0] == general[0] == 5 + count
        # The last request's time is the text its raw row gets, to the microsecond; through
        # ``datetime.fromtimestamp`` it could be rounded the other way.
        assert fast[2] == raw_text
        assert abs(as_time(fast[2]) - as_time(general[2])) <= timedelta(microseconds=1)
        if start is LATER:  # never moved back
            assert fast[1] == general[1] == "2026-03-01 23:00:00.000000"
        else:
            assert fast[1] == fast[2]
    assert stored_texts(engine, pairs[0][0])[2] == "2026-03-01 12:00:00.999999"


def as_time(text: object) -> datetime:
    return datetime.fromisoformat(str(text))
