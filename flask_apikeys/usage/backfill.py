"""The rollup backfill: raw usage rows written before the rollups existed, added to them
(``flask apikeys usage backfill-rollups``).

Set-based: the database does the sums. Each hour to rebuild is one ``INSERT … SELECT … GROUP
BY`` over its raw rows (the latency histogram counted by ``CASE`` expressions, valid on SQLite,
PostgreSQL, MySQL and MariaDB), then one statement adds the organization-wide rows of a day's
rebuilt hours from its per-key rows, and one makes the day rows the sums of their hours. No raw
row travels to Python: a million rows take seconds, not minutes.

Which hours: those whose raw rows outnumber the requests their rollups hold (rows written
before the rollups, or in the hour of the upgrade, beside the writer's). Such an hour is
deleted and summed again from its raw rows, so a second run finds every hour whole and changes
nothing. Hours whose raw rows were pruned or never kept (``APIKEYS_USAGE_RAW_ROWS``) hold fewer
raw rows than rollups and are left alone: the backfill never lowers what the rollups hold.

The current hour: by default the backfill stops at its start, because the usage writer is still
adding to it (a rebuild would race the writer's flushes). Rows of the hour of the upgrade that
the old code wrote are therefore counted by running the backfill again once that hour is over
(:attr:`BackfillReport.rows_left` says how many raw rows of later hours it did not look at).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..models import ALL_KEYS, LATENCY_BUCKET_EDGES_MS, NO_ERROR_CODE
from .rollups import ADDED_COLUMNS, GROUP_COLUMNS, rollups, usage

ONE_HOUR = timedelta(hours=1)
ONE_DAY = timedelta(days=1)
#: The rollup columns a rebuilt row sets, in the order of the selects below.
INSERTED_COLUMNS = (
    "organization_id",
    "api_key_id",
    "method",
    "endpoint",
    "status_class",
    "error_code",
    "granularity",
    "bucket_start",
    *ADDED_COLUMNS,
)


@dataclass
class BackfillReport:
    """What :func:`backfill_rollups` did."""

    hours_checked: int = 0
    hours_rebuilt: int = 0
    rows_counted: int = 0
    #: Raw rows from ``until`` on (by default the current hour's), not looked at: run the
    #: backfill again once their hour is over if the writer did not count them.
    rows_left: int = 0


def backfill_rollups(
    connect: Callable[[], Any],
    *,
    until: datetime | None = None,
    since: datetime | None = None,
    progress: Callable[[datetime], None] | None = None,
) -> BackfillReport:
    """Rebuild the rollups of every hour before ``until`` (default: the start of the current
    hour) whose raw rows outnumber the requests its rollups hold, one UTC day per transaction.

    Idempotent: a second run finds every hour whole and changes nothing.
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
            break
        day = next_row.replace(hour=0, minute=0, second=0, microsecond=0)
        with connect() as connection:
            _backfill_day(connection, day, limit, report)
        if progress is not None:
            progress(day)
        cursor = day + ONE_DAY
    with connect() as connection:
        report.rows_left = _count(connection, usage.c.timestamp, sa.func.count(), limit, None)
    return report


def _backfill_day(
    connection: sa.Connection, day: datetime, limit: datetime, report: BackfillReport
) -> None:
    """Rebuild the incomplete hours of ``day`` before ``limit``, then the day's rows."""
    end = min(day + ONE_DAY, limit)
    hours = []
    start = day
    while start < end:
        hours.append(start)
        start += ONE_HOUR
    report.hours_checked += len(hours)
    every_key = sa.and_(rollups.c.granularity == "hour", rollups.c.api_key_id == ALL_KEYS)
    raw_day = _count(connection, usage.c.timestamp, sa.func.count(), day, end)
    counted = sa.func.sum(rollups.c.requests)
    rollup_day = _count(connection, rollups.c.bucket_start, counted, day, end, every_key)
    if raw_day <= rollup_day:  # the whole day is counted: one look, no hour to check
        return
    raw_counts = {start: raw_day for start in hours}  # more than the rollups' none
    rollup_counts: dict[datetime, int] = {}
    if rollup_day:  # some hours counted: find which
        raw_counts = _hour_counts(connection, usage.c.timestamp, sa.func.count(), hours)
        rollup_counts = _hour_counts(connection, rollups.c.bucket_start, counted, hours, every_key)
    stale = [start for start in hours if raw_counts.get(start, 0) > rollup_counts.get(start, 0)]
    if not stale:
        return
    for start in stale:
        connection.execute(
            sa.delete(rollups).where(
                rollups.c.granularity == "hour", rollups.c.bucket_start == start
            )
        )
        connection.execute(
            sa.insert(rollups).from_select(INSERTED_COLUMNS, _hour_from_raw_rows(start))
        )
    connection.execute(sa.insert(rollups).from_select(INSERTED_COLUMNS, _every_key_of(stale)))
    rebuilt = connection.execute(
        sa.select(sa.func.count(sa.distinct(rollups.c.bucket_start))).where(
            rollups.c.granularity == "hour", rollups.c.bucket_start.in_(stale)
        )
    ).scalar_one()  # not the inserts' rowcount: some drivers give -1 for INSERT … SELECT
    report.hours_rebuilt += int(rebuilt)
    report.rows_counted += raw_day if not rollup_day else sum(raw_counts[hour] for hour in stale)
    _rebuild_day(connection, day)


def _hour_from_raw_rows(start: datetime) -> sa.Select[Any]:
    """The hour rollup rows (per key) that the raw rows of the hour from ``start`` add up to,
    in :data:`INSERTED_COLUMNS` order."""
    elapsed = usage.c.response_time_ms
    histogram = []
    lows: list[float | None] = [None, *LATENCY_BUCKET_EDGES_MS]
    highs: list[float | None] = [*LATENCY_BUCKET_EDGES_MS, None]
    for low, high in zip(lows, highs, strict=True):
        # The writer's bucket: the first whose upper edge is at least the latency.
        conditions = []
        if low is not None:
            conditions.append(elapsed > low)
        if high is not None:
            conditions.append(elapsed <= high)
        histogram.append(sa.func.sum(sa.case((sa.and_(*conditions), 1), else_=0)))
    dimensions = (
        usage.c.organization_id,
        usage.c.api_key_id,
        usage.c.method,
        usage.c.endpoint,
        usage.c.status_code // 100,
        sa.func.coalesce(usage.c.error_code, NO_ERROR_CODE),
    )
    return (
        sa.select(
            *dimensions,
            sa.literal("hour", rollups.c.granularity.type),
            sa.literal(start, rollups.c.bucket_start.type),
            sa.func.sum(sa.case((usage.c.status_code >= 400, 1), else_=0)),  # errors
            sa.func.count(),  # requests
            sa.func.sum(elapsed),
            sa.func.coalesce(sa.func.sum(usage.c.tokens_used), 0),
            sa.func.coalesce(sa.func.sum(usage.c.cost_usd), 0),
            *histogram,
        )
        .where(usage.c.timestamp >= start, usage.c.timestamp < start + ONE_HOUR)
        .group_by(*dimensions)
    )


def _every_key_of(hours: list[datetime]) -> sa.Select[Any]:
    """The organization-wide hour rows of ``hours``: the sums of their per-key rows."""
    grouped = [rollups.c[name] for name in INSERTED_COLUMNS[:8] if name != "api_key_id"]
    return (
        sa.select(
            rollups.c.organization_id,
            sa.literal(ALL_KEYS, rollups.c.api_key_id.type),
            *grouped[1:],
            *(sa.func.sum(rollups.c[name]) for name in ADDED_COLUMNS),
        )
        .where(
            rollups.c.granularity == "hour",
            rollups.c.bucket_start.in_(hours),
            rollups.c.api_key_id != ALL_KEYS,
        )
        .group_by(*grouped)
    )


def _rebuild_day(connection: sa.Connection, day: datetime) -> None:
    """Make the day rollups of ``day`` the sums of its hour rollups."""
    connection.execute(
        sa.delete(rollups).where(rollups.c.granularity == "day", rollups.c.bucket_start == day)
    )
    grouped = [rollups.c[name] for name in GROUP_COLUMNS if name != "bucket_start"]
    select = (
        sa.select(
            *grouped,
            sa.literal("day", rollups.c.granularity.type),
            sa.literal(day, rollups.c.bucket_start.type),
            *(sa.func.sum(rollups.c[name]) for name in ADDED_COLUMNS),
        )
        .where(
            rollups.c.granularity == "hour",
            rollups.c.bucket_start >= day,
            rollups.c.bucket_start < day + ONE_DAY,
        )
        .group_by(*grouped)
    )
    names = [column.name for column in grouped] + ["granularity", "bucket_start", *ADDED_COLUMNS]
    connection.execute(sa.insert(rollups).from_select(names, select))


def _count(
    connection: sa.Connection,
    moment: sa.ColumnElement[Any],
    measure: sa.ColumnElement[Any],
    start: datetime,
    end: datetime | None,
    *conditions: sa.ColumnElement[bool],
) -> int:
    """``measure`` over the rows whose ``moment`` is from ``start`` up to ``end``."""
    bounds = [moment >= start] if end is None else [moment >= start, moment < end]
    query = sa.select(measure).where(*bounds, *conditions)
    return int(connection.execute(query).scalar() or 0)


def _hour_counts(
    connection: sa.Connection,
    moment: sa.ColumnElement[Any],
    measure: sa.ColumnElement[Any],
    hours: list[datetime],
    *conditions: sa.ColumnElement[bool],
) -> dict[datetime, int]:
    """Per hour: ``measure`` over the rows whose ``moment`` falls in it (one query per hour:
    portable, each a range scan of an index)."""
    counts = {}
    for start in hours:
        counts[start] = _count(connection, moment, measure, start, start + ONE_HOUR, *conditions)
    return counts
