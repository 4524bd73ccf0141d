"""Rollup upserts for groups of one request, the common case when keys are cold.

A key that sends a request now and then has a group of its own in each flush: one request,
one histogram bucket set to 1. The general upsert (:func:`~.rollups.upsert_statement`) binds
all 25 buckets and the sums for such a row, and adds 25 ``excluded`` values on conflict. The
statements here name the one bucket the request adds to, as a constant: the other buckets are
stored as constant zeros and left alone on conflict, and a row without tokens or cost binds
neither. One statement per bucket (and per "has tokens or cost"), compiled once per dialect.

Only the prepared path (:data:`~.prepared.PREPARED_DIALECTS`, SQLite) runs them: it holds the
database's write lock for the whole transaction, so splitting a flush's upserts by statement
changes no lock order. Other dialects keep one ordered ``executemany`` of the general upsert.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from ..models import LATENCY_BUCKET_COLUMNS, APIKeyUsageRollup

rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]

#: What a one-request row binds, in the order the flush builds its tuples: the group (in the
#: table's order), then the errors (0 or 1) and the latency.
SINGLE_COLUMNS = (
    "organization_id",
    "granularity",
    "bucket_start",
    "api_key_id",
    "method",
    "endpoint",
    "status_class",
    "error_code",
    "errors",
    "latency_sum_ms",
)
#: The same, for a row that also has tokens or a cost.
SINGLE_COLUMNS_WITH_AMOUNTS = (*SINGLE_COLUMNS, "tokens_used", "cost_usd")
_UNIQUE = (
    "organization_id",
    "granularity",
    "api_key_id",
    "bucket_start",
    "method",
    "endpoint",
    "status_class",
    "error_code",
)
_ONE: sa.ColumnClause[int] = sa.literal_column("1", sa.Integer)
_ZERO: sa.ColumnClause[int] = sa.literal_column("0", sa.Integer)


@functools.cache
def single_request_upsert(bucket: int, with_amounts: bool) -> sa.Executable:
    """The SQLite upsert adding one request of histogram bucket ``bucket`` to its rollup row;
    binds :data:`SINGLE_COLUMNS` (``with_amounts``: :data:`SINGLE_COLUMNS_WITH_AMOUNTS`)."""
    names = SINGLE_COLUMNS_WITH_AMOUNTS if with_amounts else SINGLE_COLUMNS
    values: dict[str, Any] = {
        name: sa.bindparam(name, type_=rollups.c[name].type) for name in names
    }
    values["requests"] = _ONE
    if not with_amounts:
        values["tokens_used"] = _ZERO
        values["cost_usd"] = _ZERO
    for index, name in enumerate(LATENCY_BUCKET_COLUMNS):
        values[name] = _ONE if index == bucket else _ZERO
    statement = sqlite.insert(rollups).values(values)
    added = ["errors", "latency_sum_ms", *(["tokens_used", "cost_usd"] if with_amounts else [])]
    changes: dict[str, Any] = {name: rollups.c[name] + statement.excluded[name] for name in added}
    counted = ("requests", LATENCY_BUCKET_COLUMNS[bucket])
    changes.update({name: rollups.c[name] + _ONE for name in counted})
    return statement.on_conflict_do_update(index_elements=list(_UNIQUE), set_=changes)
