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
once take their row locks in the same order (SQLite has none: its first write locks the whole
database until the commit, so there the order is left as it comes). On PostgreSQL with
psycopg 3 the rows go in that order as arrays, in one statement (:mod:`.array_rollups`).

:mod:`~flask_apikeys.usage.backfill` adds raw rows written before the rollups existed.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from operator import add
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
from .array_rollups import column_processors, unnest_upsert, upsert_arrays
from .prepared import PREPARED_DIALECTS, execute_many, prepare
from .single_rollups import (
    GROUP_IN_TABLE_ORDER,
    SINGLE_COLUMNS,
    SINGLE_COLUMNS_WITH_AMOUNTS,
    UNIQUE_GROUP_COLUMNS,
    multi_row_sql,
    single_request_upsert,
    write_single_requests,
)

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
#: The columns of a rollup row in the order the flush builds its tuples (the table's order,
#: which is the order SQLAlchemy binds an ``INSERT``'s parameters in).
ROW_COLUMNS = (*GROUP_IN_TABLE_ORDER, "requests", "errors", *SUM_COLUMNS[1:])
#: A group: (organization's id number, key's id number, hour number since the epoch, method,
#: endpoint, status class, error code). Ids by their ``UUID.int``: an int hashes in C where a
#: UUID's ``__hash__`` is Python code, and orders as the UUID's text does (fixed-width hex).
GroupKey = tuple[int, int, int, str, str, int, str]
Groups = dict[GroupKey, list[Any]]
#: One-request rows by (histogram bucket, with tokens or cost), for :mod:`.single_rollups`.
Singles = dict[tuple[int, bool], list[tuple[Any, ...]]]
#: The histogram's edges as floats, the latencies' own type: ``bisect_left`` compares a float
#: with an int through a slower path, once per edge it looks at, per request of a flush.
_FLOAT_EDGES_MS = tuple(map(float, LATENCY_BUCKET_EDGES_MS))


def aggregate(rows: Iterable[tuple[Any, ...]]) -> tuple[Groups, dict[int, Any]]:
    """Sum queued usage rows (in :data:`~flask_apikeys.usage.insert.USAGE_FIELDS` order, the
    time a POSIX float) per hour group: requests, latency, tokens, cost, histogram; and the id
    objects by their numbers.

    The loop runs once per request, inside the flush: it groups by the ids' numbers (a slot
    read) rather than the UUIDs themselves (a Python-level ``__hash__`` per use).
    """
    groups: Groups = {}
    ids: dict[int, Any] = {}
    edges = _FLOAT_EDGES_MS
    empty = [0, 0.0, 0, 0.0] + [0] * len(LATENCY_BUCKET_COLUMNS)
    for (
        key_id, organization_id, moment, endpoint, method, status, elapsed, tokens, cost,
        _address, _agent, _message, code,
    ) in rows:  # fmt: skip
        organization_number = organization_id.int
        key_number = key_id.int
        group = (
            organization_number,
            key_number,
            int(moment // HOUR),
            method,
            endpoint,
            status // 100,
            code or NO_ERROR_CODE,
        )
        sums = groups.get(group)
        if sums is None:
            ids[organization_number] = organization_id
            ids[key_number] = key_id
            sums = groups[group] = empty.copy()
        sums[0] += 1
        sums[1] += elapsed
        if tokens:
            sums[2] += tokens
        if cost:
            sums[3] += cost
        sums[FIRST_BUCKET + bisect_left(edges, elapsed)] += 1
    return groups, ids


def _by_day(hours: Groups) -> Groups:
    """The same sums per UTC day (the group's hour number becomes a day number)."""
    days: Groups = {}
    for (
        organization_id,
        key_id,
        hour,
        method,
        endpoint,
        status_class,
        code,
    ), sums in hours.items():
        group = (organization_id, key_id, hour // 24, method, endpoint, status_class, code)
        total = days.get(group)
        if total is None:
            days[group] = sums.copy()
        else:
            days[group] = list(map(add, total, sums))
    return days


def _with_all_keys(groups: Groups) -> Groups:
    """The groups, and the same sums over every key of an organization (key :data:`ALL_KEYS`):
    what an organization's statistics read, a key's count of rows fewer."""
    merged: Groups = dict(groups)
    all_keys = ALL_KEYS.int
    for (organization_id, _key, hour, method, endpoint, status_class, code), sums in groups.items():
        group = (organization_id, all_keys, hour, method, endpoint, status_class, code)
        total = merged.get(group)
        merged[group] = sums.copy() if total is None else list(map(add, total, sums))
    return merged


def _parameters(
    granularity: str, seconds: int, groups: Groups, ids: dict[int, Any]
) -> list[dict[str, Any]]:
    """The groups' rows as dicts, ordered by group (SQLAlchemy's ``executemany``)."""
    parameters = []
    starts: dict[int, datetime] = {}  # a flush spans a bucket or two, and has many groups
    for group in sorted(groups):
        organization_id, key_id, number, method, endpoint, status_class, code = group
        sums = groups[group]
        start = starts.get(number)
        if start is None:
            start = starts[number] = datetime.fromtimestamp(number * seconds, UTC)
        row = dict(zip(SUM_COLUMNS, sums, strict=True))
        row.update(
            organization_id=ids[organization_id],
            api_key_id=ids[key_id],
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


def _tuples(
    granularity: str,
    seconds: int,
    groups: Groups,
    texts: tuple[dict[int, Any], dict[int, Any]],
    convert_start: Callable[[Any], Any],
    sum_processors: tuple[tuple[int, Callable[[Any], Any]], ...],
    singles: Singles | None = None,
    in_order: bool = True,
) -> list[tuple[Any, ...]]:
    """The groups' rows as the driver's tuples in :data:`ROW_COLUMNS` order, ordered by group:
    each id converted once per flush (``texts``: the organizations', the keys'), each bucket's
    start once per call; ``in_order=False``: in the groups' order instead (SQLite).

    With ``singles``, a group of one request goes there instead, under its histogram bucket and
    whether it has tokens or a cost, as a tuple of
    :data:`~.single_rollups.SINGLE_COLUMNS` (or ``SINGLE_COLUMNS_WITH_AMOUNTS``).
    """
    rows = []
    starts: dict[int, Any] = {}
    organization_texts, key_texts = texts
    for group in sorted(groups) if in_order else groups:
        sums = groups[group]
        organization_id, key_id, number, method, endpoint, status_class, code = group
        start = starts.get(number)
        if start is None:
            start = starts[number] = convert_start(datetime.fromtimestamp(number * seconds, UTC))
        for index, convert in sum_processors:
            sums[index] = convert(sums[index])
        requests = sums[0]
        group_values = (
            organization_texts[organization_id],
            granularity,
            start,
            key_texts[key_id],
            method,
            endpoint,
            status_class,
            code,
        )
        if singles is not None and requests == 1:
            single = (*group_values, 1 if status_class >= 4 else 0, sums[1])
            bucket = sums.index(1, FIRST_BUCKET) - FIRST_BUCKET
            tokens, cost = sums[2], sums[3]
            if tokens or cost:
                singles.setdefault((bucket, True), []).append((*single, tokens, cost))
            else:
                singles.setdefault((bucket, False), []).append(single)
            continue
        rows.append((*group_values, requests, requests if status_class >= 4 else 0, *sums[1:]))
    return rows


@functools.cache
def upsert_statement(dialect_name: str) -> sa.Executable | None:
    """The statement that adds a group's sums to its rollup row, creating it when missing
    (``None``: the dialect has no upsert; see :func:`_update_then_insert`)."""
    if dialect_name in ("sqlite", "postgresql"):
        module: Any = sqlite if dialect_name == "sqlite" else postgresql
        statement = module.insert(rollups)
        return statement.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=list(UNIQUE_GROUP_COLUMNS),
            set_={name: rollups.c[name] + statement.excluded[name] for name in ADDED_COLUMNS},
        )
    if dialect_name in ("mysql", "mariadb"):
        statement = mysql.insert(rollups)
        return statement.on_duplicate_key_update(
            {name: rollups.c[name] + statement.inserted[name] for name in ADDED_COLUMNS}
        )
    return None


def write_rollups(
    connection: sa.Connection,
    rows: list[tuple[Any, ...]],
    id_texts: dict[int, Any] | None = None,
) -> None:
    """Add queued usage rows to their hour and day rollups, on ``connection`` (in the
    transaction that stores the raw rows); ``id_texts``: the driver's values of the rows' ids by
    their numbers, if the flush made them already (:meth:`.insert.InsertPlan.id_texts`)."""
    if not rows:
        return
    groups, ids = aggregate(rows)
    ids[ALL_KEYS.int] = ALL_KEYS
    hours = _with_all_keys(groups)
    days = _by_day(hours)
    dialect = connection.dialect
    statement = upsert_statement(dialect.name)
    if statement is not None and dialect.name in PREPARED_DIALECTS:
        prepared = prepare(statement, dialect, ROW_COLUMNS)
        processors = dict(prepared.positions)
        if prepared.order == ROW_COLUMNS and _convertible(processors):
            convert_key = processors["api_key_id"] or _same
            convert_organization = processors["organization_id"] or _same
            known = id_texts or {}
            key_texts = {
                number: known[number] if number in known else convert_key(value)
                for number, value in ids.items()
            }
            organization_texts = {
                number: key_texts[number] if number in known else convert_organization(ids[number])
                for number in {group[0] for group in groups}
            }
            conversions = ((organization_texts, key_texts), *_value_conversions(processors))
            singles: Singles | None = {} if _singles_prepared(dialect) else None
            # SQLite: the transaction holds the database's write lock, so neither the groups'
            # order nor the statements' across buckets takes row locks out of order.
            in_order = dialect.name != "sqlite"
            general = [
                *_tuples("hour", HOUR, hours, *conversions, singles, in_order),
                *_tuples("day", DAY, days, *conversions, singles, in_order),
            ]
            if general:
                connection.exec_driver_sql(prepared.sql, general)
            for (bucket, with_amounts), rows_of_bucket in sorted((singles or {}).items()):
                write_single_requests(connection, bucket, with_amounts, rows_of_bucket)
            return
    if statement is not None and unnest_upsert(dialect):
        _write_arrays(connection, statement, hours, days, ids)
        return
    add_to_rollups(
        connection, _parameters("hour", HOUR, hours, ids) + _parameters("day", DAY, days, ids)
    )


def _value_conversions(
    processors: Mapping[str, Callable[[Any], Any] | None],
) -> tuple[Callable[[Any], Any], tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """A rollup row's bucket start conversion, and its sums' (position, conversion) pairs for
    the sums the dialect converts."""
    sum_processors = tuple(
        (index, convert)
        for index, name in enumerate(SUM_COLUMNS)
        if (convert := processors[name]) is not None
    )
    return processors["bucket_start"] or _same, sum_processors


def _write_arrays(
    connection: sa.Connection,
    statement: sa.Executable,
    hours: Groups,
    days: Groups,
    ids: dict[int, Any],
) -> None:
    """PostgreSQL: the rows of both granularities in one statement (:mod:`.array_rollups`),
    in the general path's order (hours, then days, each sorted by group)."""
    processors = column_processors(connection.dialect, ROW_COLUMNS)
    if not _convertible(processors):
        raise RuntimeError(f"unexpected rollup conversions for {connection.dialect.name}")
    convert_key = processors["api_key_id"] or _same
    convert_organization = processors["organization_id"] or _same
    key_values = {number: convert_key(value) for number, value in ids.items()}
    organization_values = {number: convert_organization(value) for number, value in ids.items()}
    conversions = ((organization_values, key_values), *_value_conversions(processors))
    rows = [*_tuples("hour", HOUR, hours, *conversions), *_tuples("day", DAY, days, *conversions)]
    upsert_arrays(connection, statement, ROW_COLUMNS, rows)


_singles_checked: dict[str, bool] = {}


def prepare_rollups(dialect: sa.Dialect) -> None:
    """Compile the statements a flush's rollups need on ``dialect``, once: the writer calls it
    before its transaction's first write, since on SQLite that write locks the database."""
    _singles_prepared(dialect)


def _singles_prepared(dialect: sa.Dialect) -> bool:
    """Whether the one-request upserts bind what the tuples hold, as the general one does
    (SQLite; the same columns, the same conversions), once per dialect. All compiled at once,
    on the first flush: compiled as rows needed them, the flushes that met a new bucket paid."""
    checked = _singles_checked.get(dialect.name)
    if checked is None:
        checked = _singles_checked[dialect.name] = _check_singles(dialect)
    return checked


def _check_singles(dialect: sa.Dialect) -> bool:
    if dialect.name != "sqlite":
        return False
    general = upsert_statement(dialect.name)
    if general is None:
        return False
    processors = dict(prepare(general, dialect, ROW_COLUMNS).positions)
    for bucket in range(len(LATENCY_BUCKET_COLUMNS)):
        for with_amounts, names in ((False, SINGLE_COLUMNS), (True, SINGLE_COLUMNS_WITH_AMOUNTS)):
            single = prepare(single_request_upsert(bucket, with_amounts), dialect, names)
            multi_row_sql(dialect, bucket, with_amounts)  # made now, checked
            if single.order != names or any(
                (convert is None) != (processors[name] is None)
                for name, convert in single.positions
            ):
                return False
    return True


def _same(value: Any) -> Any:
    return value


def _convertible(processors: dict[str, Callable[[Any], Any] | None]) -> bool:
    """Whether the tuples' conversions (the ids, the bucket start, the sums) are all the
    dialect makes: none for the group's texts and numbers."""
    return all(
        processors[name] is None
        for name in ("granularity", "method", "endpoint", "status_class", "error_code", "errors")
    )


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
