"""A flush's key counters: many keys in one ``UPDATE``, where the database can join one.

Each key of a flush adds its requests to ``total_requests`` and moves its last-use times
forward (never back: rows from several processes arrive out of order). With cold keys a flush
has about as many keys as rows, and one execution of ``UPDATE … WHERE id = ?`` per key cost
more than the rest of the row's flush but its rollups: each execution pays the statement's
start and end, its journal and the driver's call. Here one statement updates many keys,
joined with their values:

- SQLite 3.33 and later: ``UPDATE … FROM (VALUES (?, ?, ?), …)``, :data:`KEYS_PER_STATEMENT`
  keys at a time (older SQLite builds allow 999 parameters);
- PostgreSQL with psycopg 3: ``UPDATE … FROM unnest(ids, counts, times)``, every key of the
  flush at once, the rows locked in the order of their ids first, as the writer's one
  ``executemany`` per key did, so two processes flushing the same keys queue instead of
  deadlocking.

Elsewhere (MySQL, MariaDB, SQLite before 3.33, other drivers), the writer runs its statement
once per key. The SQL goes through ``exec_driver_sql``: cursor events see it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from itertools import chain
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from ..models import APIKey

keys_table: sa.Table = APIKey.__table__  # type: ignore[assignment]
#: The first SQLite with ``UPDATE … FROM``.
SQLITE_UPDATE_FROM = (3, 33, 0)
#: Keys per SQLite statement: three parameters each, under the 999 of older builds.
KEYS_PER_STATEMENT = 256
#: Keys per statement for the rest of a flush's keys, then one statement per key.
KEYS_PER_SMALL_STATEMENT = 16


def joined_update(dialect: sa.Dialect) -> str | None:
    """How ``dialect`` updates many keys' counters in one statement: ``"values"`` (SQLite
    3.33+), ``"unnest"`` (PostgreSQL with psycopg 3), or ``None`` (one execution per key)."""
    if dialect.name == "sqlite":
        version = getattr(dialect.loaded_dbapi, "sqlite_version_info", (0,))
        return "values" if tuple(version) >= SQLITE_UPDATE_FROM else None
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        return "unnest"
    return None


def _names(dialect: sa.Dialect) -> dict[str, str]:
    quote = dialect.identifier_preparer.quote
    names = {
        name: quote(name) for name in ("id", "total_requests", "last_used_at", "last_request_at")
    }
    names["table"] = dialect.identifier_preparer.format_table(keys_table)
    return names


def _assignments(names: dict[str, str], count: str, seen: str) -> str:
    """The ``SET`` list: the requests added, the last use moved forward only, the last
    request's time stored (the writer's ``_ADD_REQUESTS``, with joined values)."""
    last_used = f"{names['table']}.{names['last_used_at']}"
    return (
        f"{names['total_requests']} = {names['table']}.{names['total_requests']} + {count}, "
        f"{names['last_used_at']} = CASE WHEN {last_used} IS NULL OR {last_used} < {seen} "
        f"THEN {seen} ELSE {last_used} END, "
        f"{names['last_request_at']} = {seen}"
    )


@functools.cache
def sqlite_sql(dialect: sa.Dialect, keys: int) -> str:
    """The SQLite statement updating ``keys`` keys, bound as (id, count, time) per key."""
    names = _names(dialect)
    values = ", ".join(["(?, ?, ?)"] * keys)
    # Identifiers quoted by the dialect, placeholders only: no value is in the text.
    return (
        f"UPDATE {names['table']} SET "  # noqa: S608  # nosec B608
        f"{_assignments(names, 'counted.column2', 'counted.column3')} "
        f"FROM (VALUES {values}) AS counted "
        f"WHERE {names['table']}.{names['id']} = counted.column1"
    )


@functools.cache
def postgresql_sql(dialect: sa.Dialect) -> str:
    """The PostgreSQL statement updating the keys of three arrays: ids, counts, times (naive
    UTC). The ``locked`` rows are taken in the ids' order before any is updated."""
    names = _names(dialect)
    table, key = names["table"], names["id"]
    id_type = keys_table.c.id.type.compile(dialect=dialect)
    count_type = keys_table.c.total_requests.type.compile(dialect=dialect)
    time_type = keys_table.c.last_used_at.type.compile(dialect=dialect)
    # Identifiers quoted by the dialect, placeholders only: no value is in the text.
    return (
        f"WITH locked AS (SELECT {key} FROM {table} "  # noqa: S608  # nosec B608
        f"WHERE {key} = ANY(CAST(%(key_ids)b AS {id_type}[])) ORDER BY {key} FOR UPDATE) "
        f"UPDATE {table} SET {_assignments(names, 'counted.added', 'counted.seen')} "
        f"FROM locked JOIN unnest(CAST(%(key_ids)b AS {id_type}[]), "
        f"CAST(%(counts)b AS {count_type}[]), CAST(%(seen)b AS {time_type}[])) "
        f"AS counted (key_id, added, seen) ON counted.key_id = locked.{key} "
        f"WHERE {table}.{key} = locked.{key}"
    )


def update_sqlite(
    connection: sa.Connection, keys: Sequence[tuple[Any, int, str]]
) -> Sequence[tuple[Any, int, str]]:
    """Add to the counters of ``keys`` (the id's and the time's text as SQLite stores them,
    the requests) :data:`KEYS_PER_STATEMENT` keys per statement, then
    :data:`KEYS_PER_SMALL_STATEMENT`; return the keys left (fewer than that), for the
    statement of one key.

    Two sizes only: each distinct statement is prepared by SQLite once per connection (the
    driver's statement cache), and preparing one of many keys costs about as much as updating
    a few hundred keys one by one.
    """
    dialect = connection.dialect
    start = 0
    for size in (KEYS_PER_STATEMENT, KEYS_PER_SMALL_STATEMENT):
        whole = start + (len(keys) - start) // size * size
        if whole == start:
            continue
        chunks = [
            tuple(chain.from_iterable(keys[first : first + size]))
            for first in range(start, whole, size)
        ]
        connection.exec_driver_sql(sqlite_sql(dialect, size), chunks)
        start = whole
    return keys[start:]


def update_postgresql(
    connection: sa.Connection, ids: Sequence[UUID], counts: Sequence[int], seen: Sequence[datetime]
) -> None:
    """Add to the counters of the keys ``ids`` (distinct) their ``counts`` and ``seen`` times
    (naive UTC), in one statement."""
    connection.exec_driver_sql(
        postgresql_sql(connection.dialect),
        {"key_ids": list(ids), "counts": list(counts), "seen": list(seen)},
    )
