"""Usage rollups: the sums every statistic reads, kept by the writer as it flushes.

A rollup row holds one organization's requests of one key, method, endpoint rule, status class
and error code in one bucket — an hour, or a UTC day — as counts, a latency sum, tokens, cost
and a fixed latency histogram (:data:`~flask_apikeys.models.LATENCY_BUCKET_EDGES_MS`). Sums and
histograms merge by addition, so a month is read from at most 31 day rows per group (plus the
hours at its edges), however many requests it had.

The writer adds a flush's rows to both granularities with an upsert (``INSERT … ON CONFLICT DO
UPDATE`` on SQLite and PostgreSQL, ``ON DUPLICATE KEY UPDATE`` on MySQL and MariaDB) in the
transaction that inserts the raw rows: either both are stored or neither is, whichever process
flushes and whenever it dies. Groups are written in sorted order, so two workers flushing at
once take their row locks in the same order.

:func:`backfill_rollups` rebuilds the rollups of hours whose raw rows outnumber them (rows
written before the rollups existed); it never lowers what the rollups hold.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..models import (
    ALL_KEYS,
    LATENCY_BUCKET_COLUMNS,
    LATENCY_BUCKET_EDGES_MS,
    NO_ERROR_CODE,
    APIKeyUsage,
    APIKeyUsageRollup,
)
from .prepared import execute_many

rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]
usage: sa.Table = APIKeyUsage.__table__  # type: ignore[assignment]
HOUR = 3600
DAY = 86400
#: The columns that name a rollup row's group (its unique key, with ``granularity``).
GROUP_COLUMNS = (
    "organization_id",
    "api_key_id",
    "bucket_start",
    "method",
    "endpoint",
    "status_class",
    "error_code",
)
#: The columns a flush adds to, in the order of a group's sums list.
SUM_COLUMNS = ("requests", "latency_sum_ms", "tokens_used", "cost_usd", *LATENCY_BUCKET_COLUMNS)
FIRST_BUCKET = 4  # where the histogram starts in a group's sums
ADDED_COLUMNS = ("errors", *SUM_COLUMNS)
#: A group: (organization, key, hour number since the epoch, method, endpoint, status class,
#: error code).
GroupKey = tuple[Any, Any, int, str, str, int, str]


def aggregate(rows: Iterable[tuple[Any, ...]]) -> dict[GroupKey, list[Any]]:
    """Sum queued usage rows (in :data:`~flask_apikeys.usage.insert.USAGE_FIELDS` order, the
    time a POSIX float) per hour group: requests, latency, tokens, cost, histogram.

    The loop runs once per request, inside the flush: it groups by the ids' objects
    (``id()``, a C call) rather than hashing each UUID (a Python-level ``__hash__``), and
    merges equal ids held by different objects afterwards, once per group.
    """
    by_object: dict[tuple[Any, ...], list[Any]] = {}
    objects: dict[int, Any] = {}
    edges = LATENCY_BUCKET_EDGES_MS
    empty = [0, 0.0, 0, 0.0] + [0] * len(LATENCY_BUCKET_COLUMNS)
    for (
        key_id, organization_id, moment, endpoint, method, status, elapsed, tokens, cost,
        _address, _agent, _message, code,
    ) in rows:  # fmt: skip
        group = (id(organization_id), id(key_id), moment // HOUR, method, endpoint, status, code)
        sums = by_object.get(group)
        if sums is None:
            objects[id(organization_id)] = organization_id
            objects[id(key_id)] = key_id
            sums = by_object[group] = empty.copy()
        sums[0] += 1
        sums[1] += elapsed
        if tokens:
            sums[2] += tokens
        if cost:
            sums[3] += cost
        sums[FIRST_BUCKET + bisect_left(edges, elapsed)] += 1
    groups: dict[GroupKey, list[Any]] = {}
    for (
        organization_ref,
        key_ref,
        hour,
        method,
        endpoint,
        status,
        code,
    ), sums in by_object.items():
        merged: GroupKey = (
            objects[organization_ref],
            objects[key_ref],
            int(hour),
            method,
            endpoint,
            status // 100,
            code or NO_ERROR_CODE,
        )
        total = groups.get(merged)
        groups[merged] = (
            sums if total is None else [a + b for a, b in zip(total, sums, strict=True)]
        )
    return groups


def _by_day(hours: dict[GroupKey, list[Any]]) -> dict[GroupKey, list[Any]]:
    """The same sums per UTC day (the group's hour number becomes a day number)."""
    days: dict[GroupKey, list[Any]] = {}
    for (organization_id, key_id, hour, *rest), sums in hours.items():
        group: GroupKey = (organization_id, key_id, hour // 24, *rest)
        total = days.get(group)
        if total is None:
            days[group] = sums.copy()
        else:
            days[group] = [a + b for a, b in zip(total, sums, strict=True)]
    return days


def _with_all_keys(groups: dict[GroupKey, list[Any]]) -> dict[GroupKey, list[Any]]:
    """The groups, and the same sums over every key of an organization (key :data:`ALL_KEYS`):
    what an organization's statistics read, a key's count of rows fewer."""
    merged: dict[GroupKey, list[Any]] = dict(groups)
    for (organization_id, _key, *rest), sums in groups.items():
        group: GroupKey = (organization_id, ALL_KEYS, *rest)
        total = merged.get(group)
        merged[group] = (
            sums.copy() if total is None else [a + b for a, b in zip(total, sums, strict=True)]
        )
    return merged


def _parameters(
    granularity: str, seconds: int, groups: dict[GroupKey, list[Any]]
) -> list[dict[str, Any]]:
    parameters = []
    starts: dict[int, datetime] = {}  # a flush spans a bucket or two, and has many groups
    for group in sorted(groups, key=_sort_key):
        organization_id, key_id, number, method, endpoint, status_class, code = group
        sums = groups[group]
        start = starts.get(number)
        if start is None:
            start = starts[number] = datetime.fromtimestamp(number * seconds, UTC)
        row = dict(zip(SUM_COLUMNS, sums, strict=True))
        row.update(
            organization_id=organization_id,
            api_key_id=key_id,
            granularity=granularity,
            bucket_start=start,
            method=method,
            endpoint=endpoint,
            status_class=status_class,
            error_code=code,
            errors=sums[0] if status_class >= 4 else 0,
        )
        parameters.append(row)
    return parameters


def _sort_key(group: GroupKey) -> tuple[int, int, int, str, str, int, str]:
    # A UUID's number orders as its text does (fixed-width hex), without formatting the text.
    organization_id, key_id, number, method, endpoint, status_class, code = group
    return (organization_id.int, key_id.int, number, method, endpoint, status_class, code)


@functools.cache
def upsert_statement(dialect_name: str) -> sa.Executable | None:
    """The statement that adds a group's sums to its rollup row, creating it when missing
    (``None``: the dialect has no upsert; see :func:`_update_then_insert`)."""
    unique = ["organization_id", "granularity", *GROUP_COLUMNS[1:]]
    if dialect_name in ("sqlite", "postgresql"):
        module: Any = sqlite if dialect_name == "sqlite" else postgresql
        statement = module.insert(rollups)
        return statement.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=unique,
            set_={name: rollups.c[name] + statement.excluded[name] for name in ADDED_COLUMNS},
        )
    if dialect_name in ("mysql", "mariadb"):
        statement = mysql.insert(rollups)
        return statement.on_duplicate_key_update(
            {name: rollups.c[name] + statement.inserted[name] for name in ADDED_COLUMNS}
        )
    return None


def write_rollups(connection: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Add queued usage rows to their hour and day rollups, on ``connection`` (in the
    transaction that stores the raw rows)."""
    if not rows:
        return
    hours = _with_all_keys(aggregate(rows))
    parameters = _parameters("hour", HOUR, hours) + _parameters("day", DAY, _by_day(hours))
    add_to_rollups(connection, parameters)


def add_to_rollups(connection: sa.Connection, parameters: list[dict[str, Any]]) -> None:
    """Upsert rollup rows (one dict of :data:`ADDED_COLUMNS` and the group per row)."""
    statement = upsert_statement(connection.dialect.name)
    if statement is None:
        _update_then_insert(connection, parameters)
    else:
        execute_many(connection, statement, parameters)


def _update_then_insert(connection: sa.Connection, parameters: list[dict[str, Any]]) -> None:
    """Other databases: an ``UPDATE``, and an ``INSERT`` where it found no row. Two processes
    creating the same row at once make the second flush fail and be retried whole."""
    for row in parameters:
        matches = [rollups.c[name] == row[name] for name in ("granularity", *GROUP_COLUMNS)]
        updated = connection.execute(
            sa.update(rollups)
            .where(*matches)
            .values({name: rollups.c[name] + row[name] for name in ADDED_COLUMNS})
        )
        if updated.rowcount == 0:
            connection.execute(sa.insert(rollups), row)


# -- backfill ----------------------------------------------------------------------------------


@dataclass
class BackfillReport:
    """What :func:`backfill_rollups` did."""

    hours_checked: int = 0
    hours_rebuilt: int = 0
    rows_counted: int = 0


def _hour_aggregate(connection: sa.Connection, start: datetime) -> list[dict[str, Any]]:
    """The hour rollup rows that the raw rows of the hour from ``start`` add up to."""
    elapsed = usage.c.response_time_ms
    lower: list[float] = [float("-inf"), *LATENCY_BUCKET_EDGES_MS]
    upper: list[float] = [*LATENCY_BUCKET_EDGES_MS, float("inf")]
    histogram = []
    for name, low, high in zip(LATENCY_BUCKET_COLUMNS, lower, upper, strict=True):
        conditions = []
        if low != float("-inf"):
            conditions.append(elapsed > low)
        if high != float("inf"):
            conditions.append(elapsed <= high)
        histogram.append(sa.func.sum(sa.case((sa.and_(*conditions), 1), else_=0)).label(name))
    status_class = sa.cast(sa.func.floor(usage.c.status_code / 100.0), sa.Integer)
    code = sa.func.coalesce(usage.c.error_code, NO_ERROR_CODE)
    dimensions = (
        usage.c.organization_id,
        usage.c.api_key_id,
        usage.c.method,
        usage.c.endpoint,
        status_class,
        code,
    )
    query = (
        sa.select(
            *dimensions,
            sa.func.count().label("requests"),
            sa.func.sum(elapsed).label("latency_sum_ms"),
            sa.func.coalesce(sa.func.sum(usage.c.tokens_used), 0).label("tokens_used"),
            sa.func.coalesce(sa.func.sum(usage.c.cost_usd), 0).label("cost_usd"),
            *histogram,
        )
        .where(usage.c.timestamp >= start, usage.c.timestamp < start + timedelta(hours=1))
        .group_by(*dimensions)
    )
    result = []
    for row in connection.execute(query):
        organization_id, key_id, method, endpoint, status, error_code, *sums = row
        values = dict(zip(SUM_COLUMNS, sums, strict=True))
        values.update(
            organization_id=organization_id,
            api_key_id=key_id,
            granularity="hour",
            bucket_start=start,
            method=method,
            endpoint=endpoint,
            status_class=int(status),
            error_code=error_code,
            errors=values["requests"] if int(status) >= 4 else 0,
            latency_sum_ms=float(values["latency_sum_ms"] or 0.0),
            cost_usd=float(values["cost_usd"]),
        )
        for name in LATENCY_BUCKET_COLUMNS:
            values[name] = int(values[name] or 0)
        result.append(values)
    every_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for values in result:
        group = tuple(values[name] for name in GROUP_COLUMNS if name != "api_key_id")
        total = every_key.get(group)
        if total is None:
            every_key[group] = {**values, "api_key_id": ALL_KEYS}
        else:
            for name in ADDED_COLUMNS:
                total[name] += values[name]
    return result + list(every_key.values())


def _rebuild_day(connection: sa.Connection, day: datetime) -> None:
    """Make the day rollups of ``day`` the sums of its hour rollups."""
    end = day + timedelta(days=1)
    connection.execute(
        sa.delete(rollups).where(
            rollups.c.granularity == "day",
            rollups.c.bucket_start == day,
        )
    )
    grouped = [rollups.c[name] for name in GROUP_COLUMNS if name != "bucket_start"]
    summed = [sa.func.sum(rollups.c[name]) for name in ADDED_COLUMNS]
    select = (
        sa.select(
            *grouped,
            sa.literal("day", rollups.c.granularity.type),
            sa.literal(day, rollups.c.bucket_start.type),
            *summed,
        )
        .where(
            rollups.c.granularity == "hour",
            rollups.c.bucket_start >= day,
            rollups.c.bucket_start < end,
        )
        .group_by(*grouped)
    )
    names = [column.name for column in grouped] + ["granularity", "bucket_start", *ADDED_COLUMNS]
    connection.execute(sa.insert(rollups).from_select(names, select))


def backfill_rollups(
    connect: Callable[[], Any],
    *,
    until: datetime | None = None,
    since: datetime | None = None,
    progress: Callable[[datetime], None] | None = None,
) -> BackfillReport:
    """Rebuild the rollups of every hour before ``until`` (default: the start of the current
    hour) whose raw rows outnumber the requests its rollups hold, one UTC day per transaction.

    Idempotent: a second run finds every hour whole and changes nothing. Hours whose raw rows
    were pruned, or never kept (``APIKEYS_USAGE_RAW_ROWS``), hold fewer raw rows than rollups
    and are left as they are.
    """
    report = BackfillReport()
    limit = until or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    cursor = since
    while True:
        # The next day with raw rows, by an index seek: empty months cost one query.
        with connect() as connection:
            later = [usage.c.timestamp < limit]
            if cursor is not None:
                later.append(usage.c.timestamp >= cursor)
            first = connection.execute(sa.select(sa.func.min(usage.c.timestamp)).where(*later))
            next_row = first.scalar()
        if next_row is None:
            return report
        day = next_row.replace(hour=0, minute=0, second=0, microsecond=0)
        with connect() as connection:
            if _backfill_day(connection, day, limit, report):
                _rebuild_day(connection, day)
        if progress is not None:
            progress(day)
        cursor = day + timedelta(days=1)


def _backfill_day(
    connection: sa.Connection, day: datetime, limit: datetime, report: BackfillReport
) -> bool:
    """Rebuild the incomplete hours of ``day`` before ``limit``; whether any was."""
    end = min(day + timedelta(days=1), limit)
    every_key = sa.and_(rollups.c.granularity == "hour", rollups.c.api_key_id == ALL_KEYS)
    raw_day = _count(connection, usage.c.timestamp, sa.func.count(), day, end)
    counted = sa.func.sum(rollups.c.requests)
    rollup_day = _count(connection, rollups.c.bucket_start, counted, day, end, every_key)
    if raw_day <= rollup_day:  # the whole day is counted: one look, no hour to check
        report.hours_checked += 24
        return False
    hours = [day + timedelta(hours=offset) for offset in range(24)]
    raw_counts = {start: raw_day for start in hours}  # at least as many as the rollups' 0
    rollup_counts: dict[datetime, int] = {}
    if rollup_day:  # some hours counted: find which
        raw_counts = _hour_counts(connection, usage.c.timestamp, sa.func.count(), day)
        rollup_counts = _hour_counts(connection, rollups.c.bucket_start, counted, day, every_key)
    rebuilt = False
    for start, raw in sorted(raw_counts.items()):
        if start >= limit:
            break
        report.hours_checked += 1
        if raw <= rollup_counts.get(start, 0):
            continue
        connection.execute(
            sa.delete(rollups).where(
                rollups.c.granularity == "hour", rollups.c.bucket_start == start
            )
        )
        parameters = _hour_aggregate(connection, start)
        if parameters:
            connection.execute(sa.insert(rollups), parameters)
        report.hours_rebuilt += bool(parameters)
        report.rows_counted += sum(
            row["requests"] for row in parameters if row["api_key_id"] == ALL_KEYS
        )
        rebuilt = True
    return rebuilt


def _count(
    connection: sa.Connection,
    moment: sa.ColumnElement[Any],
    measure: sa.ColumnElement[Any],
    start: datetime,
    end: datetime,
    *conditions: sa.ColumnElement[bool],
) -> int:
    """``measure`` over the rows whose ``moment`` is from ``start`` up to ``end``."""
    query = sa.select(measure).where(moment >= start, moment < end, *conditions)
    return int(connection.execute(query).scalar() or 0)


def _hour_counts(
    connection: sa.Connection,
    moment: sa.ColumnElement[Any],
    measure: sa.ColumnElement[Any],
    day: datetime,
    *conditions: sa.ColumnElement[bool],
) -> dict[datetime, int]:
    """Per hour of ``day``: ``measure`` over the rows whose ``moment`` falls in it (one
    query per hour: portable, each a range scan of an index)."""
    counts: dict[datetime, int] = {}
    for offset in range(24):
        start = day + timedelta(hours=offset)
        value = _count(connection, moment, measure, start, start + timedelta(hours=1), *conditions)
        if value:
            counts[start] = value
    return counts
