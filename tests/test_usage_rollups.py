"""Usage rollups: the writer keeps them equal to the raw rows, across threads, processes and a
kill mid-flush; statistics read them; the backfill adds raw rows written before them."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_apikeys import APIKeys
from flask_apikeys.models import (
    ALL_KEYS,
    LATENCY_BUCKET_COLUMNS,
    LATENCY_BUCKET_EDGES_MS,
    APIKey,
    APIKeyUsage,
    APIKeyUsageRollup,
)
from flask_apikeys.usage.rollups import FIRST_BUCKET, aggregate
from flask_apikeys.usage.stats import percentile
from flask_apikeys.usage.writer import UsageWriter

ROOT = Path(__file__).resolve().parent.parent
usage = APIKeyUsage.__table__
rollups = APIKeyUsageRollup.__table__


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def bucket_of(milliseconds: float) -> int:
    """The histogram bucket of a latency, counted independently of the writer's bisect."""
    return sum(1 for edge in LATENCY_BUCKET_EDGES_MS if edge < milliseconds)


def expected_from_raw(connection: sa.Connection) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Per hour group, what the raw rows add up to."""
    sums: dict[tuple[Any, ...], list[Any]] = defaultdict(
        lambda: [0, 0, 0.0, 0, 0.0, [0] * len(LATENCY_BUCKET_COLUMNS)]
    )
    for row in connection.execute(sa.select(usage)):
        hour = row.timestamp.replace(minute=0, second=0, microsecond=0)
        group = (
            row.organization_id,
            row.api_key_id,
            hour,
            row.method,
            row.endpoint,
            row.status_code // 100,
            row.error_code or "",
        )
        total = sums[group]
        total[0] += 1
        total[1] += 1 if row.status_code >= 400 else 0
        total[2] += row.response_time_ms
        total[3] += row.tokens_used or 0
        total[4] += row.cost_usd or 0.0
        total[5][bucket_of(row.response_time_ms)] += 1
    return dict(sums)


def normalized(total: list[Any]) -> tuple[Any, ...]:
    requests, errors, latency, tokens, cost, histogram = total
    return (requests, errors, latency, tokens, cost, tuple(histogram))


def assert_same_sums(stored: dict[Any, tuple[Any, ...]], expected: dict[Any, Any]) -> None:
    """Counts exactly, latency and cost sums to float precision (added in another order)."""
    assert stored.keys() == expected.keys()
    for group, (requests, errors, latency, tokens, cost, histogram) in stored.items():
        want = normalized(expected[group])
        assert (requests, errors, tokens, histogram) == (want[0], want[1], want[3], want[5])
        assert math.isclose(latency, want[2], rel_tol=1e-9, abs_tol=1e-6), group
        assert math.isclose(cost, want[4], rel_tol=1e-9, abs_tol=1e-6), group


def stored_rollups(
    connection: sa.Connection, granularity: str, every_key: bool = False
) -> dict[Any, tuple[Any, ...]]:
    """The rollup rows of one granularity: per key, or (``every_key``) per organization."""
    stored = {}
    chosen = rollups.c.api_key_id == ALL_KEYS if every_key else rollups.c.api_key_id != ALL_KEYS
    query = sa.select(rollups).where(rollups.c.granularity == granularity, chosen)
    for row in connection.execute(query):
        group = (
            row.organization_id,
            row.api_key_id,
            row.bucket_start,
            row.method,
            row.endpoint,
            row.status_class,
            row.error_code,
        )
        histogram = [getattr(row, name) for name in LATENCY_BUCKET_COLUMNS]
        stored[group] = normalized(
            [row.requests, row.errors, row.latency_sum_ms, row.tokens_used, row.cost_usd, histogram]
        )
    return stored


def days_from_hours(hours: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    days: dict[Any, list[Any]] = {}
    for (organization, key, hour, *rest), (
        requests,
        errors,
        latency,
        tokens,
        cost,
        bins,
    ) in hours.items():
        group = (organization, key, hour.replace(hour=0), *rest)
        total = days.setdefault(group, [0, 0, 0.0, 0, 0.0, [0] * len(bins)])
        for index, value in enumerate((requests, errors, latency, tokens, cost)):
            total[index] += value
        total[5] = [a + b for a, b in zip(total[5], bins, strict=True)]
    return days


def over_every_key(groups: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    merged: dict[Any, list[Any]] = {}
    for (organization, _key, *rest), (
        requests,
        errors,
        latency,
        tokens,
        cost,
        bins,
    ) in groups.items():
        total = merged.setdefault(
            (organization, ALL_KEYS, *rest), [0, 0, 0.0, 0, 0.0, [0] * len(bins)]
        )
        for index, value in enumerate((requests, errors, latency, tokens, cost)):
            total[index] += value
        total[5] = [a + b for a, b in zip(total[5], bins, strict=True)]
    return merged


def assert_rollups_match_raw_rows(engine: sa.Engine) -> int:
    """The hour rollups are exactly the raw rows' sums, the day rollups their hours' sums,
    per key and over every key; return how many raw rows there are."""
    with engine.connect() as connection:
        expected = expected_from_raw(connection)
        stored = {
            (granularity, every_key): stored_rollups(connection, granularity, every_key)
            for granularity in ("hour", "day")
            for every_key in (False, True)
        }
        raw = connection.execute(sa.select(sa.func.count()).select_from(usage)).scalar_one()
    assert_same_sums(stored["hour", False], expected)
    assert_same_sums(stored["day", False], days_from_hours(expected))
    assert_same_sums(stored["hour", True], over_every_key(expected))
    assert_same_sums(stored["day", True], over_every_key(days_from_hours(expected)))
    return int(raw)


def engine_of(app: Flask) -> sa.Engine:
    with app.app_context():
        return app.extensions["sqlalchemy"].engine  # type: ignore[no-any-return]


def synthetic_row(
    key_id: uuid.UUID, organization_id: uuid.UUID, moment: float, chooser: random.Random
) -> tuple[Any, ...]:
    """A queued usage row (``USAGE_FIELDS`` order) of varied endpoint, status and latency."""
    status = chooser.choice((200, 200, 201, 404, 429, 500))
    return (
        key_id,
        organization_id,
        moment,
        chooser.choice(("/v1/a", "/v1/b/<id>", "[unmatched]")),
        chooser.choice(("GET", "POST")),
        status,
        round(chooser.expovariate(1 / 40), 3),
        chooser.choice((None, 10, 1200)),
        chooser.choice((None, 0.0125, 0.5)),
        "127.0.0.1",
        "tests/1.0",
        None if status < 400 else "refused",
        None if status < 400 else chooser.choice(("rate_limited", "not_found")),
    )


def key_ids(app: Flask, apikeys: APIKeys, key: str) -> tuple[uuid.UUID, uuid.UUID]:
    with app.app_context():
        verified = apikeys.verify_key(key)
        return verified.id, verified.organization.id


def test_requests_are_counted_once_in_hour_and_day_rollups(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key = make_key(scopes=["presentations:read", "slides:generate"])
    client = app.test_client()
    headers = {"X-API-Key": key}
    assert client.get("/v1/presentations", headers=headers).status_code == 200
    assert client.get("/v1/presentations", headers=headers).status_code == 200
    assert client.post("/v1/presentations", headers=headers).status_code == 403
    assert client.post("/v1/generate/slides", headers=headers).status_code == 200
    assert client.get("/no/such/path", headers=headers).status_code == 404
    writer = app.extensions["apikeys"].writer
    key_id, organization_id = key_ids(app, apikeys, key)
    chooser = random.Random(7)
    start = datetime(2026, 3, 30, 22, 15, tzinfo=UTC).timestamp()
    for index in range(400):  # across four hours and two days
        writer.add_usage(synthetic_row(key_id, organization_id, start + index * 36, chooser))
    with app.app_context():
        assert apikeys.flush_usage() == 405
    assert assert_rollups_match_raw_rows(engine_of(app)) == 405
    with app.app_context():
        stats = apikeys.usage_stats(organization_id, start=date(2026, 3, 30), end=date(2026, 4, 1))
        today = datetime.now(UTC).date()
        now = apikeys.usage_stats(organization_id, start=today, end=today + timedelta(days=1))
    assert stats["total_requests"] == 400 and now["total_requests"] == 5
    assert now["by_status_class"] == {"2xx": 3, "4xx": 2}
    assert now["tokens_used"] == 1200 and now["cost_usd"] == 0.0125
    assert [day["requests"] for day in stats["by_day"]] == [
        sum(
            1 for i in range(400) if start + i * 36 < datetime(2026, 3, 31, tzinfo=UTC).timestamp()
        ),
        sum(
            1 for i in range(400) if start + i * 36 >= datetime(2026, 3, 31, tzinfo=UTC).timestamp()
        ),
    ]


def test_a_dropped_bad_row_is_not_counted_in_rollups(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite does not enforce foreign keys unless asked: nothing is refused")
    doomed, kept = make_key(), make_key()
    client = app.test_client()
    for key in (doomed, kept, doomed, kept):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    doomed_id, organization_id = key_ids(app, apikeys, doomed)
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(sa.delete(APIKey).where(APIKey.id == doomed_id))  # behind our back
        session.commit()
        assert apikeys.flush_usage() == 2
    assert assert_rollups_match_raw_rows(engine_of(app)) == 2
    with engine_of(app).connect() as connection:
        counted = connection.execute(
            sa.select(sa.func.count()).where(rollups.c.api_key_id == doomed_id)
        ).scalar()
    assert counted == 0


@pytest.mark.parametrize("raw_rows", ["errors", "none"])
def test_busy_deployments_keep_rollups_without_every_raw_row(
    make_app: Callable[..., Flask], raw_rows: str
) -> None:
    app = make_app(APIKEYS_USAGE_RAW_ROWS=raw_rows)
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Busy", email="ops@busy.test").id
        key = apikeys.create_key(organization, "k", scopes=["presentations:read"]).key
    client = app.test_client()
    statuses = [
        client.get(path, headers={"X-API-Key": key}).status_code
        for path in ("/v1/presentations", "/v1/presentations", "/v1/media", "/nowhere")
    ]
    assert statuses == [200, 200, 403, 404]
    with app.app_context():
        assert apikeys.flush_usage() == 4
        stats = apikeys.monthly_usage(organization, datetime.now(UTC).strftime("%Y-%m"))
        session = app.extensions["sqlalchemy"].session
        kept = sorted(session.scalars(sa.select(APIKeyUsage.status_code)))
    assert (stats["total_requests"], stats["errors"]) == (4, 2)
    assert kept == ([403, 404] if raw_rows == "errors" else [])


def writers_flush_at_once(engine: sa.Engine, key_id: Any, organization_id: Any) -> None:
    """Four writers of their own (as four workers would have), flushing the same groups."""
    start = datetime.now(UTC).timestamp() - 7200
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        writer = UsageWriter(
            engine.begin, synchronous=True, flush_interval=60, batch_size=10**6, max_queue=10**6
        )
        writer.synchronous = False  # queue without a thread; flush by hand below
        writer._thread = threading.current_thread()  # noqa: SLF001 - no thread of its own
        chooser = random.Random(seed)
        try:
            for round_number in range(15):
                for _ in range(40):
                    moment = start + chooser.uniform(0, 7200)
                    writer.add_usage(synthetic_row(key_id, organization_id, moment, chooser))
                writer.flush()
                assert writer.queued == 0, f"round {round_number} left rows queued"
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            failures.append(error)
        finally:
            writer._thread = None  # noqa: SLF001
            writer.close()

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_several_writers_flushing_at_once_count_every_row_once(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key_id, organization_id = key_ids(app, apikeys, make_key())
    engine = engine_of(app)
    writers_flush_at_once(engine, key_id, organization_id)
    assert assert_rollups_match_raw_rows(engine) == 4 * 15 * 40


WRITER_PROCESS = """
import random, sys, time, uuid
sys.path.insert(0, {root!r})
import sqlalchemy as sa
from flask_apikeys.usage.writer import UsageWriter
from tests.test_usage_rollups import synthetic_row

url, key_id, organization_id, rounds, seed = sys.argv[1:6]
key_id, organization_id = uuid.UUID(key_id), uuid.UUID(organization_id)
engine = sa.create_engine(url)
writer = UsageWriter(engine.begin, synchronous=False, flush_interval=3600, batch_size=10**9,
                     max_queue=10**9)
chooser = random.Random(int(seed))
start = time.time() - 7200
for _ in range(int(rounds)):
    for _ in range({batch}):
        writer.add_usage(synthetic_row(key_id, organization_id, start + chooser.uniform(0, 7200),
                                       chooser))
    print("flushing", flush=True)
    writer.flush()
    print("flushed", flush=True)
"""
BATCH = 3000


def writer_process(url: str, key_id: Any, organization_id: Any, rounds: int, seed: int) -> Any:
    script = WRITER_PROCESS.format(root=str(ROOT), batch=BATCH)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            url,
            str(key_id),
            str(organization_id),
            str(rounds),
            str(seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_processes_flushing_at_once_and_one_killed_mid_flush_leave_rollups_exact(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], database_url: str
) -> None:
    key_id, organization_id = key_ids(app, apikeys, make_key())
    engine = engine_of(app)
    steady = [writer_process(database_url, key_id, organization_id, 4, seed) for seed in (1, 2)]
    doomed = writer_process(database_url, key_id, organization_id, 1000, 3)
    assert doomed.stdout is not None
    flushes_begun = 0
    for line in doomed.stdout:
        if line.strip() == "flushing":
            flushes_begun += 1
            if flushes_begun == 3:
                time.sleep(random.uniform(0.0, 0.05))  # somewhere inside the third flush
                os.kill(doomed.pid, signal.SIGKILL)
                break
    doomed.wait()
    doomed.stdout.close()
    assert doomed.returncode == -signal.SIGKILL
    for process in steady:
        process.communicate(timeout=300)
        assert process.returncode == 0
    raw = assert_rollups_match_raw_rows(engine)
    # Each flush is one transaction: the killed one left all of its rows or none.
    assert raw % BATCH == 0 and 8 * BATCH + 2 * BATCH <= raw <= 8 * BATCH + 3 * BATCH
    # The key's own counter too (written first, in the same transaction): nothing counted
    # twice, nothing lost.
    with engine.connect() as connection:
        counted = connection.execute(
            sa.select(APIKey.total_requests).where(APIKey.id == key_id)
        ).scalar_one()
    assert counted == raw


def test_the_backfill_adds_older_raw_rows_once_and_is_idempotent(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key_id, organization_id = key_ids(app, apikeys, make_key())
    chooser = random.Random(11)
    start = datetime(2026, 5, 1, 20, tzinfo=UTC)
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        for index in range(120):  # written before the rollups existed: six hours, two days
            row = synthetic_row(key_id, organization_id, 0.0, chooser)
            session.add(
                APIKeyUsage(
                    api_key_id=key_id,
                    organization_id=organization_id,
                    timestamp=start + timedelta(minutes=3 * index),
                    endpoint=row[3],
                    method=row[4],
                    status_code=row[5],
                    response_time_ms=row[6],
                    tokens_used=row[7],
                    cost_usd=row[8],
                    error_code=row[12],
                )
            )
        session.commit()
    # And the writer adds rows to one of those hours afterwards: a mixed hour.
    writer = app.extensions["apikeys"].writer
    for _ in range(10):
        moment = (start + timedelta(minutes=30)).timestamp()
        writer.add_usage(synthetic_row(key_id, organization_id, moment, chooser))
    with app.app_context():
        apikeys.flush_usage()
        first = apikeys.service.retention.backfill_rollups()
        second = apikeys.service.retention.backfill_rollups()
        stats = apikeys.usage_stats(organization_id, start=date(2026, 5, 1), end=date(2026, 5, 3))
    assert first.hours_rebuilt == 6 and second.hours_rebuilt == 0
    assert assert_rollups_match_raw_rows(engine_of(app)) == 130
    assert stats["total_requests"] == 130


def test_the_backfill_sums_in_sql_what_the_writer_sums_across_organizations_and_bucket_edges(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    """Raw rows of two organizations written behind the writer's back, latencies on and beside
    every histogram edge, across a midnight: the database's sums (``INSERT … SELECT``) are
    exactly what the raw rows add up to, counted here independently."""
    with app.app_context():
        other = apikeys.create_organization(name="Other", email="ops@other.test").id
    owners = [key_ids(app, apikeys, make_key()) for _ in range(2)]
    owners.append(key_ids(app, apikeys, make_key(org=other)))
    latencies = [0.0, 0.0004, 45_000.0]
    for edge in LATENCY_BUCKET_EDGES_MS:
        latencies += [edge - 0.001, float(edge), edge + 0.001]
    chooser = random.Random(23)
    start = datetime(2026, 6, 30, 22, 30, tzinfo=UTC)
    rows = []
    for index, latency in enumerate(latencies * 3):
        key_id, organization_id = owners[index % len(owners)]
        row = synthetic_row(key_id, organization_id, 0.0, chooser)
        rows.append(
            {
                "api_key_id": key_id,
                "organization_id": organization_id,
                "timestamp": start + timedelta(seconds=37 * index),  # 22:30 to 00:49
                "endpoint": row[3],
                "method": row[4],
                "status_code": row[5],
                "response_time_ms": latency,
                "tokens_used": row[7],
                "cost_usd": row[8],
                "error_code": row[12],
            }
        )
    engine = engine_of(app)
    with engine.begin() as connection:
        connection.execute(sa.insert(usage), rows)
    with app.app_context():
        report = apikeys.service.retention.backfill_rollups()
        again = apikeys.service.retention.backfill_rollups()
    assert assert_rollups_match_raw_rows(engine) == len(rows)
    assert (report.hours_rebuilt, report.rows_counted, report.rows_left) == (3, len(rows), 0)
    assert (again.hours_rebuilt, again.rows_counted) == (0, 0)


def test_raw_rows_of_the_current_hour_are_left_to_a_later_run_and_reported(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    """The hour of the upgrade: the old code's rows of the current hour are not rebuilt while
    the writer still adds to it; the report counts them, and a run after the hour adds them."""
    key_id, organization_id = key_ids(app, apikeys, make_key())
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    engine = engine_of(app)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(usage),
            [
                {
                    "api_key_id": key_id,
                    "organization_id": organization_id,
                    "timestamp": moment,
                    "endpoint": "/v1/a",
                    "method": "GET",
                    "status_code": 200,
                    "response_time_ms": 12.5,
                }
                for moment in (hour - timedelta(minutes=5), hour, hour + timedelta(seconds=1))
            ],
        )
    runner = app.test_cli_runner()
    result = runner.invoke(args=["apikeys", "usage", "backfill-rollups", "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)
    assert (first["rows_counted"], first["rows_left"]) == (1, 2)
    with app.app_context():
        later = apikeys.service.retention.backfill_rollups(until=hour + timedelta(hours=1))
    assert (later.rows_counted, later.rows_left) == (2, 0)
    assert assert_rollups_match_raw_rows(engine) == 3


@given(
    latencies=st.lists(
        st.floats(min_value=0, max_value=60_000, allow_nan=False), min_size=1, max_size=300
    ),
    fraction=st.sampled_from([0.5, 0.95, 0.99, 0.01]),
)
def test_a_percentile_from_the_histogram_lies_in_the_bucket_of_the_true_one(
    latencies: list[float], fraction: float
) -> None:
    histogram = [0] * len(LATENCY_BUCKET_COLUMNS)
    for value in latencies:
        histogram[bucket_of(value)] += 1
    true = sorted(latencies)[max(1, math.ceil(fraction * len(latencies))) - 1]
    estimate = percentile(histogram, fraction)
    assert estimate is not None
    index = bucket_of(true)
    low = 0.0 if index == 0 else LATENCY_BUCKET_EDGES_MS[index - 1]
    high = LATENCY_BUCKET_EDGES_MS[min(index, len(LATENCY_BUCKET_EDGES_MS) - 1)]
    assert low <= estimate <= high


def test_any_period_counts_the_rows_of_its_whole_hours(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the period arithmetic is the same on every database: SQLite is enough")
    key_id, organization_id = key_ids(app, apikeys, make_key())
    origin = datetime(2026, 2, 26, tzinfo=UTC)
    chooser = random.Random(5)
    moments = sorted(origin.timestamp() + chooser.uniform(0, 5 * 86400) for _ in range(600))
    writer = app.extensions["apikeys"].writer
    for moment in moments:
        writer.add_usage(synthetic_row(key_id, organization_id, moment, chooser))
    with app.app_context():
        apikeys.flush_usage()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        start=st.integers(min_value=-12, max_value=6 * 24 * 4),
        length=st.integers(min_value=1, max_value=6 * 24 * 4),
    )
    def check(start: int, length: int) -> None:
        begin = origin + timedelta(minutes=15 * start)
        end = begin + timedelta(minutes=15 * length)
        whole_begin = begin.replace(minute=0)
        whole_end = end if end.minute == 0 else end.replace(minute=0) + timedelta(hours=1)
        expected = sum(1 for m in moments if whole_begin.timestamp() <= m < whole_end.timestamp())
        with app.app_context():
            stats = apikeys.usage_stats(organization_id, start=begin, end=end)
        assert stats["total_requests"] == expected
        assert sum(day["requests"] for day in stats["by_day"]) == expected

    check()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(LATENCY_BUCKET_EDGES_MS),
            st.sampled_from(LATENCY_BUCKET_EDGES_MS).map(float),
            st.integers(min_value=0, max_value=100_000),
            st.floats(min_value=0, max_value=100_000, allow_nan=False),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_a_flush_puts_each_latency_in_its_histogram_bucket_edges_included(
    latencies: list[float],
) -> None:
    """The flush bisects float edges (cheaper for float latencies): an int latency, and one on
    an edge, still land in the bucket the edges' definition gives."""
    key_id, organization_id = uuid.uuid4(), uuid.uuid4()
    rows = [
        (key_id, organization_id, 1_767_225_600.0, "/r", "GET", 200, latency, None, None)
        + (None, None, None, None)
        for latency in latencies
    ]
    groups, _ = aggregate(rows)
    (sums,) = groups.values()
    expected = [0] * len(LATENCY_BUCKET_COLUMNS)
    for latency in latencies:
        expected[bucket_of(latency)] += 1
    assert sums[FIRST_BUCKET:] == expected
