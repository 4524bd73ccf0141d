"""Many parameter sets for one DML statement, without SQLAlchemy's per-row parameter work.

A flush adds its rows to their rollups and to their keys' counters with ``executemany``.
Through ``connection.execute(statement, list_of_dicts)`` SQLAlchemy builds every row's
parameters in Python, converting each value with its column's bind processor: with every row
of another key (most keys of a multi-tenant API are cold) that cost several times what SQLite
spent storing the rows. Here the statement is compiled once per dialect, each value object is
converted once per call (a flush passes the same ids and bucket starts many times), and the
rows go to the driver as tuples through ``exec_driver_sql``, so cursor events still see them.

Only SQLite takes this path: PostgreSQL with psycopg 3 sends a flush's key counters and
rollups as arrays instead (:mod:`.key_counters`, :mod:`.array_rollups`); MySQL and MariaDB
keep SQLAlchemy's path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

#: Dialects whose driver takes positional tuples in one ``executemany`` as fast as any batch.
PREPARED_DIALECTS = frozenset({"sqlite"})


class PreparedMany:
    """``statement`` compiled for ``dialect`` with parameters named ``names``."""

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect, names: Sequence[str]):
        if not isinstance(statement, sa.ClauseElement):
            raise TypeError(f"not a SQL statement: {statement!r}")
        compiled = statement.compile(dialect=dialect, column_keys=list(names))
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a DML statement: {statement!r}")
        positions = compiled.positiontup
        if positions is None:
            raise ValueError(f"{dialect.name} binds by name: use SQLAlchemy's executemany")
        self.sql = compiled.string
        processors: dict[str, Callable[[Any], Any] | None] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        #: Per position: the parameter's name and its converter (``None``: passed as is).
        self.positions = tuple((name, processors.get(name)) for name in positions)
        #: The parameters' names in the order the driver takes them.
        self.order = tuple(positions)
        #: Each name once, with its converter: a name bound at several positions (a key's
        #: last use, compared and then stored) is converted once per row.
        self.distinct = tuple(dict.fromkeys(self.positions))
        index_of = {name: index for index, (name, _) in enumerate(self.distinct)}
        #: Where each position's value is among the distinct ones.
        self._spread = [index_of[name] for name in positions]

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """The rows as the driver's tuples, each value object converted once.

        Remembered by the object's ``id()`` (the rows keep every object alive meanwhile): a
        UUID's or an aware datetime's own hash costs about as much as converting it, and a
        flush passes the same objects many times (an organization's id, a bucket's start).
        """
        converted: list[dict[int, Any]] = [{} for _ in self.distinct]
        spread = self._spread
        repeated = len(spread) > len(self.distinct)
        result = []
        for row in rows:
            values = []
            for (name, processor), seen in zip(self.distinct, converted, strict=True):
                value = row[name]
                if processor is not None and value is not None:
                    known = seen.get(id(value), seen)
                    if known is seen:
                        known = seen[id(value)] = processor(value)
                    value = known
                values.append(value)
            result.append(tuple([values[index] for index in spread]) if repeated else tuple(values))
        return result


_prepared: dict[tuple[sa.Executable, str, tuple[str, ...]], PreparedMany] = {}


def prepare(statement: sa.Executable, dialect: sa.Dialect, names: Sequence[str]) -> PreparedMany:
    """``statement`` compiled for ``dialect`` with parameters ``names``, remembered: it must be
    built once (a module constant), not per call."""
    remembered = (statement, dialect.name, tuple(names))
    prepared = _prepared.get(remembered)
    if prepared is None:
        prepared = _prepared[remembered] = PreparedMany(statement, dialect, names)
    return prepared


def execute_many(
    connection: sa.Connection, statement: sa.Executable, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``connection.execute(statement, rows)``: the same rows stored, for less on SQLite.

    Every row must have the same keys. ``statement`` is compiled once and remembered, so it
    must be built once (a module constant), not per call.
    """
    if not rows:
        return
    dialect = connection.dialect
    if dialect.name not in PREPARED_DIALECTS:
        connection.execute(statement, list(rows))
        return
    prepared = prepare(statement, dialect, tuple(rows[0]))
    connection.exec_driver_sql(prepared.sql, prepared.parameters(rows))
