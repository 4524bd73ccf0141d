"""PostgreSQL: every rollup row of a flush in one ``INSERT … SELECT … FROM unnest(…)``.

The general upsert (:func:`~.rollups.upsert_statement`) ran once per rollup row through
psycopg's ``executemany``: pipelined (one round trip), but SQLAlchemy built each row's
parameters and PostgreSQL planned and ran an ``INSERT`` per row, about four rows per cold
request (the key's hour and day, the organization's). Here the rows go as one array per column
and PostgreSQL inserts them in one statement, with the general upsert's own ``ON CONFLICT …
DO UPDATE``.

The rows keep the general path's order: sorted by group, hours then days, and a function scan
returns an array's elements in order, so two processes flushing at once still lock the rows
they share in the same order. One statement must not hold two rows of one conflict target
(PostgreSQL refuses to update a row twice): the flush's groups are merged first, and the hour
and day rows differ by their granularity.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ..models import APIKeyUsageRollup

rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]
#: A type's length, precision or scale, left to the column: the rows are assigned to it as
#: the general path's parameters are (an explicit cast to ``VARCHAR(4)`` would cut a longer
#: text where assigning it is an error).
_MODIFIERS = re.compile(r"\(.*\)")


def unnest_upsert(dialect: sa.Dialect) -> bool:
    """Whether ``dialect`` writes a flush's rollups as arrays: PostgreSQL with psycopg 3,
    whose lists are sent as arrays."""
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def column_processors(
    dialect: sa.Dialect, columns: Sequence[str]
) -> dict[str, Callable[[Any], Any] | None]:
    """Each column's bind processor on ``dialect`` (``None``: the value goes as it is)."""
    return {
        name: rollups.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
    }


@functools.cache
def unnest_sql(dialect: sa.Dialect, upsert: sa.Executable, columns: tuple[str, ...]) -> str:
    """``upsert`` (an ``INSERT … VALUES … ON CONFLICT``) with its ``VALUES`` replaced by the
    rows of one array per column of ``columns``, each bound under the column's name."""
    if not isinstance(upsert, sa.ClauseElement):
        raise TypeError(f"not a SQL statement: {upsert!r}")
    compiled = upsert.compile(dialect=dialect, column_keys=list(columns))
    head, rest = compiled.string.split(" ON CONFLICT ", 1)
    insert = head.split(" VALUES ", 1)[0]
    quote = dialect.identifier_preparer.quote
    if not insert.endswith(f"({', '.join(map(quote, columns))})"):
        raise RuntimeError(f"unexpected rollup upsert for {dialect.name}: {compiled.string}")
    arrays = ", ".join(
        f"CAST(%({name})b AS {_MODIFIERS.sub('', rollups.c[name].type.compile(dialect=dialect))}[])"
        for name in columns
    )
    return f"{insert} SELECT * FROM unnest({arrays}) ON CONFLICT {rest}"  # noqa: S608  # nosec B608


def upsert_arrays(
    connection: sa.Connection,
    upsert: sa.Executable,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Upsert ``rows`` (tuples of ``columns``, converted, in lock order) in one statement."""
    if not rows:
        return
    arrays = {
        name: list(values) for name, values in zip(columns, zip(*rows, strict=True), strict=True)
    }
    connection.exec_driver_sql(unnest_sql(connection.dialect, upsert, columns), arrays)
