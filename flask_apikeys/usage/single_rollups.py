"""Rollup upserts for groups of one request, the common case when keys are cold.

A key that sends a request now and then has a group of its own in each flush: one request,
one histogram bucket set to 1. The general upsert (:func:`~.rollups.upsert_statement`) binds
all 25 buckets and the sums for such a row, and adds 25 ``excluded`` values on conflict. The
statements here name the one bucket the request adds to, as a constant: the other buckets are
stored as constant zeros and left alone on conflict, and a row without tokens or cost binds
neither. One statement per bucket (and per "has tokens or cost"), compiled once per dialect,
in two sizes: a bucket's rows go :data:`ROWS_PER_STATEMENT` at a time in one multi-row
statement (SQLite's upsert handles each row of its ``VALUES`` on its own, and a flush's groups
are distinct), the rest one by one.

Only the prepared path (:data:`~.prepared.PREPARED_DIALECTS`, SQLite) runs them: it holds the
database's write lock for the whole transaction, so splitting a flush's upserts by statement
changes no lock order. Other dialects keep one ordered ``executemany`` of the general upsert.
"""

from __future__ import annotations

import functools
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from ..models import LATENCY_BUCKET_COLUMNS, APIKeyUsageRollup
from .prepared import prepare

rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]

#: The columns that name a rollup row's group, in the table's order: what every row the flush
#: builds starts with (:data:`~.rollups.ROW_COLUMNS` too).
GROUP_IN_TABLE_ORDER = (
    "organization_id",
    "granularity",
    "bucket_start",
    "api_key_id",
    "method",
    "endpoint",
    "status_class",
    "error_code",
)
#: What a one-request row binds, in the order the flush builds its tuples: the group, then the
#: errors (0 or 1) and the latency.
SINGLE_COLUMNS = (*GROUP_IN_TABLE_ORDER, "errors", "latency_sum_ms")
#: The same, for a row that also has tokens or a cost.
SINGLE_COLUMNS_WITH_AMOUNTS = (*SINGLE_COLUMNS, "tokens_used", "cost_usd")
#: The conflict target of every rollup upsert: the columns of the table's unique constraint.
UNIQUE_GROUP_COLUMNS = next(
    tuple(constraint.columns.keys())
    for constraint in rollups.constraints
    if isinstance(constraint, sa.UniqueConstraint)
    and constraint.name == "uq_api_key_usage_rollups_bucket"
)
#: One-request rows per multi-row statement (12 parameters each at most).
ROWS_PER_STATEMENT = 16
_ONE: sa.ColumnClause[int] = sa.literal_column("1", sa.Integer)
_ZERO: sa.ColumnClause[int] = sa.literal_column("0", sa.Integer)


@functools.cache
def single_request_upsert(bucket: int, with_amounts: bool, rows: int = 1) -> sqlite.Insert:
    """The SQLite upsert adding one request of histogram bucket ``bucket`` to its rollup row;
    binds :data:`SINGLE_COLUMNS` (``with_amounts``: :data:`SINGLE_COLUMNS_WITH_AMOUNTS`).
    With ``rows`` > 1, as many rows at once, their parameters named ``name_row``."""
    names = SINGLE_COLUMNS_WITH_AMOUNTS if with_amounts else SINGLE_COLUMNS
    constants: dict[str, Any] = {"requests": _ONE}
    if not with_amounts:
        constants["tokens_used"] = _ZERO
        constants["cost_usd"] = _ZERO
    for index, name in enumerate(LATENCY_BUCKET_COLUMNS):
        constants[name] = _ONE if index == bucket else _ZERO
    values = [
        {
            **{
                name: sa.bindparam(
                    name if rows == 1 else f"{name}_{row}", type_=rollups.c[name].type
                )
                for name in names
            },
            **constants,
        }
        for row in range(rows)
    ]
    statement = sqlite.insert(rollups).values(values[0] if rows == 1 else values)
    added = ["errors", "latency_sum_ms", *(["tokens_used", "cost_usd"] if with_amounts else [])]
    changes: dict[str, Any] = {name: rollups.c[name] + statement.excluded[name] for name in added}
    counted = ("requests", LATENCY_BUCKET_COLUMNS[bucket])
    changes.update({name: rollups.c[name] + _ONE for name in counted})
    return statement.on_conflict_do_update(index_elements=list(UNIQUE_GROUP_COLUMNS), set_=changes)


@functools.cache
def multi_row_sql(dialect: sa.Dialect, bucket: int, with_amounts: bool) -> str:
    """:func:`single_request_upsert` of :data:`ROWS_PER_STATEMENT` rows: the one-row
    statement's SQL with its ``VALUES`` group repeated, so its rows' values bind one row after
    the other, each in the one-row statement's order.

    Made from the compiled one-row statement rather than compiled itself: compiling 16 rows of
    ~35 values takes SQLAlchemy ~8 ms, for each bucket, on each process's first flush.
    """
    names = SINGLE_COLUMNS_WITH_AMOUNTS if with_amounts else SINGLE_COLUMNS
    single = prepare(single_request_upsert(bucket, with_amounts), dialect, names)
    head, values_and_rest = single.sql.split(" VALUES ", 1)
    group, rest = values_and_rest.split(" ON CONFLICT ", 1)
    if single.order != names or not (group.startswith("(") and group.endswith(")")):
        raise RuntimeError(f"unexpected one-request upsert for {dialect.name}: {single.sql}")
    groups = ", ".join([group] * ROWS_PER_STATEMENT)
    return f"{head} VALUES {groups} ON CONFLICT {rest}"


def write_single_requests(
    connection: sa.Connection, bucket: int, with_amounts: bool, rows: list[tuple[Any, ...]]
) -> None:
    """Upsert one-request rows of one bucket (tuples of the statement's columns, converted):
    :data:`ROWS_PER_STATEMENT` at a time, the rest one by one. Each execution of a statement
    costs SQLite its start and its end (a statement journal opened and closed) beside the
    row's own work: once per chunk here."""
    whole = len(rows) - len(rows) % ROWS_PER_STATEMENT
    if whole:
        chunks = [
            tuple(chain.from_iterable(rows[start : start + ROWS_PER_STATEMENT]))
            for start in range(0, whole, ROWS_PER_STATEMENT)
        ]
        connection.exec_driver_sql(multi_row_sql(connection.dialect, bucket, with_amounts), chunks)
    if whole < len(rows):
        names = SINGLE_COLUMNS_WITH_AMOUNTS if with_amounts else SINGLE_COLUMNS
        single = prepare(single_request_upsert(bucket, with_amounts), connection.dialect, names)
        connection.exec_driver_sql(single.sql, rows[whole:])
