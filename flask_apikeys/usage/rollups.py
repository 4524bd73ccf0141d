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

:mod:`~flask_apikeys.usage.backfill` adds raw rows written before the rollups existed.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Iterable
from datetime import UTC, datetime
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
