"""How a flush of buffered usage rows reaches the database: in bulk, as each driver likes it.

The rows wait in :mod:`flask_apikeys.usage`'s queue as plain tuples in :data:`USAGE_FIELDS`
order, their timestamp still a POSIX float. Writing them through SQLAlchemy's ``insert()`` with
a list of dicts spent more per row in parameter handling than the database spent storing it;
here each column's bind processor is looked up once per dialect and applied directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import chain, compress, groupby, repeat
from operator import attrgetter, is_, itemgetter, mod, mul
from typing import Any

import sqlalchemy as sa

from ..boundedcache import BoundedCache
from ..models import APIKeyUsage
from .key_counters import joined_update, update_postgresql, update_sqlite
from .prepared import PREPARED_DIALECTS, execute_many, prepare

usage_table: sa.Table = APIKeyUsage.__table__  # type: ignore[assignment]
USAGE_FIELDS = (
    "api_key_id",
    "organization_id",
    "timestamp",
    "endpoint",
    "method",
    "status_code",
    "response_time_ms",
    "tokens_used",
    "cost_usd",
    "ip_address",
    "user_agent",
    "error_message",
    "error_code",
)
#: Where a row keeps the key's and the organization's ids, and its timestamp.
ID_COLUMNS = (0, 1)
TIMESTAMP_COLUMN = 2
#: 13 columns × 64 rows = 832 parameters, under the 999 that older SQLite builds allow.
ROWS_PER_STATEMENT = 64
ALL_PRESENT = (True,) * len(USAGE_FIELDS)
#: An id's number (``UUID.int``): hashed in C, where a ``UUID``'s ``__hash__`` is Python code.
_NUMBER = attrgetter("int")
#: The driver's values of a flush's ids, by their numbers (:meth:`InsertPlan.id_texts`).
IdTexts = dict[int, Any]
#: What a key counters' statement binds (:meth:`InsertPlan.add_requests`).
COUNTER_PARAMETERS = ("key_id", "count", "seen")
#: Statements remembered per dialect at most (row counts × patterns of NULL columns).
MAX_STATEMENTS = 256

_SAMPLE_MOMENTS = (datetime(2024, 2, 29, 23, 59, 58, 123456), datetime(2030, 1, 2, 3, 4, 5))


def _iso_text(moment: datetime) -> str:
    return moment.isoformat(" ", "microseconds")


def _second_text(second: int) -> str:
    """A whole POSIX second as SQLite's text of a naive UTC time, without the fraction."""
    return datetime.fromtimestamp(second, UTC).replace(tzinfo=None).isoformat(" ", "seconds")


#: The columns a usage row may leave NULL (the others always have a value).
NULLABLE_COLUMNS = tuple(
    index for index, name in enumerate(USAGE_FIELDS) if usage_table.c[name].nullable
)


@functools.cache
def present_columns(nulls: tuple[bool, ...]) -> tuple[bool, ...]:
    """Per column of :data:`USAGE_FIELDS`, whether it has a value, from which of
    :data:`NULLABLE_COLUMNS` are NULL; :data:`ALL_PRESENT` itself when none is."""
    present = [True] * len(USAGE_FIELDS)
    for index, null in zip(NULLABLE_COLUMNS, nulls, strict=True):
        present[index] = not null
    return ALL_PRESENT if all(present) else tuple(present)


class InsertPlan:
    """How queued usage rows reach one dialect's driver, worked out once per dialect.

    A flush converts the rows itself, with each column's bind processor, and hands them to the
    driver in bulk: SQLAlchemy's per-row parameter handling cost more than the database's own
    work for a row. On PostgreSQL with psycopg 3 the rows are streamed with ``COPY … FROM
    STDIN`` (a third of an ``executemany``'s cost); on SQLite they go as multi-row ``INSERT …
    VALUES (…), (…)`` statements of up to :data:`ROWS_PER_STATEMENT` rows (a statement per row
    would release and take back the GIL for each); elsewhere, one ``executemany``.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect

        def processor(column_type: Any) -> Callable[[Any], Any] | None:
            return column_type.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[no-any-return]

        columns = usage_table.c
        #: ``(position in the row, processor)`` of the other columns the dialect converts.
        self.processors = tuple(
            (index, convert)
            for index, name in enumerate(USAGE_FIELDS)
            if index > TIMESTAMP_COLUMN and (convert := processor(columns[name].type))
        )
        #: The conversion of the key and organization ids (``None``: passed as they are).
        self.id_processor = processor(columns.api_key_id.type)
        #: The conversion of a naive UTC ``datetime`` (what ``UTCDateTime`` stores).
        time_processor = processor(columns.timestamp.type.impl)  # type: ignore[attr-defined]
        #: Whether the dialect stores times as ISO text (SQLite): then rows skip ``datetime``.
        self.iso_text = time_processor is not None and all(
            time_processor(moment) == _iso_text(moment) for moment in _SAMPLE_MOMENTS
        )
        self.time_processor = time_processor
        #: (rows, columns present) → the statement's SQL and, for named parameters, their names.
        self._statements: BoundedCache[
            tuple[int, tuple[bool, ...]], tuple[str, tuple[str, ...] | None]
        ] = BoundedCache(MAX_STATEMENTS)
        self.method = "executemany"
        if dialect.name == "sqlite":
            self.method = "values"
        elif dialect.name == "postgresql" and dialect.driver == "psycopg":
            self.method = "copy"
            preparer = dialect.identifier_preparer
            columns_list = ", ".join(preparer.quote(name) for name in USAGE_FIELDS)
            table = preparer.format_table(usage_table)
            self.copy_sql = f"COPY {table} ({columns_list}) FROM STDIN"

    def statement(
        self, rows: int, present: tuple[bool, ...] = ALL_PRESENT
    ) -> tuple[str, tuple[str, ...] | None]:
        """The SQL inserting ``rows`` rows of the ``present`` columns (the others are NULL), and
        its parameter names (``None``: positional)."""
        statement = self._statements.get((rows, present))
        if statement is None:
            fields = tuple(compress(USAGE_FIELDS, present))
            # Parameters named here, row after row, so the values are bound by names we chose.
            names = tuple(f"{name}_{row}" for row in range(rows) for name in fields)
            placeholders: list[dict[str, Any]] = [
                {name: sa.bindparam(f"{name}_{row}") for name in fields} for row in range(rows)
            ]
            # One row as a single VALUES: dialects without multi-row VALUES (Oracle) run it
            # once per row (``executemany``).
            values = placeholders[0] if rows == 1 else placeholders
            compiled = sa.insert(usage_table).values(values).compile(dialect=self.dialect)
            # A positional paramstyle binds in the order the compiler lists (``positiontup``,
            # public): the values are flattened row after row, so that must be this order.
            positions = compiled.positiontup
            if positions is not None and tuple(positions) != names:
                raise RuntimeError(f"unexpected parameter order for {self.dialect.name}")
            statement = self._statements.put(
                (rows, present), (compiled.string, names if positions is None else None)
            )
        return statement

    def id_texts(self, rows: list[tuple[Any, ...]]) -> IdTexts | None:
        """The driver's value of every key's and organization's id in the queued ``rows``, by
        the id's number, each converted once: a flush binds a cold key's id three times (its
        counters, its raw row, its rollups). ``None``: the driver takes ids as they are."""
        convert_id = self.id_processor
        if convert_id is None:
            return None
        ids: dict[int, Any] = {}
        for index in ID_COLUMNS:
            column = list(map(itemgetter(index), rows))
            ids.update(zip(map(_NUMBER, column), column, strict=True))
        return {number: convert_id(value) for number, value in ids.items()}

    def execute(
        self, connection: Any, rows: list[tuple[Any, ...]], texts: IdTexts | None = None
    ) -> None:
        """Insert the queued rows on ``connection`` (a SQLAlchemy connection in a transaction);
        ``texts``: their ids' :meth:`id_texts`, if made already."""
        if not rows:
            return
        columns = self.columns(rows, texts)
        if self.method == "copy":
            cursor = connection.connection.cursor()  # the same transaction's DBAPI cursor
            try:
                with cursor.copy(self.copy_sql) as copy:
                    for row in zip(*columns, strict=True):
                        copy.write_row(row)
            except connection.dialect.loaded_dbapi.IntegrityError as error:
                # The driver's own error, raw: give callers SQLAlchemy's, as the other paths do.
                raise sa.exc.IntegrityError(self.copy_sql, None, error) from error
            except connection.dialect.loaded_dbapi.DataError as error:
                raise sa.exc.DataError(self.copy_sql, None, error) from error
            finally:
                cursor.close()
            return
        if self.method == "executemany":
            sql, names = self.statement(1)
            converted = list(zip(*columns, strict=True))
            if names is None:
                connection.exec_driver_sql(sql, converted)
            else:
                connection.exec_driver_sql(
                    sql, [dict(zip(names, row, strict=True)) for row in converted]
                )
            return
        # NULLs are left out of the statement rather than bound: the sqlite3 module binds None
        # only after failing to find an adapter for it, which cost more than storing the row.
        # Consecutive rows with the same NULL columns share statements, in their order.
        is_null = [map(is_, columns[index], repeat(None)) for index in NULLABLE_COLUMNS]
        nulls = zip(*is_null, strict=True)  # per row, which nullable columns are NULL
        start = 0
        for pattern, run in groupby(nulls):
            end = start + sum(1 for _ in run)
            self._insert_run(connection, columns, start, end, present_columns(pattern))
            start = end

    def add_requests(
        self,
        connection: Any,
        statement: sa.Executable,
        keys: list[tuple[Any, int, float]],
        texts: IdTexts | None = None,
    ) -> None:
        """Add to the counters of ``keys`` (its id, its requests, its latest POSIX time), in
        their order: many keys per statement where the dialect joins an ``UPDATE`` with their
        values (:mod:`.key_counters`), else ``statement``, which binds
        :data:`COUNTER_PARAMETERS`, once per key; ``texts``: the ids' :meth:`id_texts`, if made
        already.

        On SQLite the parameters are the driver's own, made as the raw rows' are (the id's
        text, the time's text from the float): through ``execute_many`` each time went from a
        float to an aware ``datetime``, a naive one and then text, per key, which with cold
        keys is per row.
        """
        if not keys:
            return
        convert_id = self.id_processor
        joined = joined_update(self.dialect)
        if joined == "unnest":
            ids, counts, times = zip(*keys, strict=True)
            update_postgresql(connection, ids, counts, self._timestamps(times))
            return
        if self.dialect.name not in PREPARED_DIALECTS or not self.iso_text or convert_id is None:
            execute_many(
                connection,
                statement,
                [
                    {"key_id": key_id, "count": count, "seen": datetime.fromtimestamp(seen, UTC)}
                    for key_id, count, seen in keys
                ],
            )
            return
        prepared = prepare(statement, self.dialect, COUNTER_PARAMETERS)
        # Each position's value from a (text of the id, count, text of the time) triple: a
        # tuple, as the statement has several positions.
        spread = itemgetter(*map(COUNTER_PARAMETERS.index, prepared.order))
        ids, counts, times = zip(*keys, strict=True)
        id_texts = (
            map(convert_id, ids) if texts is None else map(texts.__getitem__, map(_NUMBER, ids))
        )
        triples: Sequence[tuple[Any, int, str]] = list(
            zip(id_texts, counts, self._timestamps(times), strict=True)
        )
        if joined == "values":
            triples = update_sqlite(connection, triples)
        if triples:
            connection.exec_driver_sql(prepared.sql, list(map(spread, triples)))

    def _insert_run(
        self,
        connection: Any,
        columns: list[Sequence[Any]],
        start: int,
        end: int,
        present: tuple[bool, ...],
    ) -> None:
        """Rows ``start`` to ``end`` (the same columns present) in multi-row ``INSERT``s."""
        kept = list(compress(columns, present))  # the columns this statement binds
        while start < end:
            left = end - start
            # Whole statements of the largest size, then powers of two: at most a handful of
            # distinct statements to compile and cache.
            size = (
                ROWS_PER_STATEMENT if left >= ROWS_PER_STATEMENT else 1 << (left.bit_length() - 1)
            )
            sql, names = self.statement(size, present)
            chunk = zip(*[column[start : start + size] for column in kept], strict=True)
            values = tuple(chain.from_iterable(chunk))
            connection.exec_driver_sql(
                sql, values if names is None else dict(zip(names, values, strict=True))
            )
            start += size

    def columns(
        self, rows: list[tuple[Any, ...]], texts: IdTexts | None = None
    ) -> list[Sequence[Any]]:
        """The queued rows (whose timestamps are still floats) column by column, as the driver
        takes them (the ids from ``texts``, or converted here).

        By column rather than by row: each conversion then runs as one ``map`` over a column,
        in C, where a loop over rows cost more per row than the database's own work.
        """
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
        if texts is None:
            texts = self.id_texts(rows)
        if texts is not None:
            for index in ID_COLUMNS:
                columns[index] = list(map(texts.__getitem__, map(_NUMBER, columns[index])))
        columns[TIMESTAMP_COLUMN] = self._timestamps(columns[TIMESTAMP_COLUMN])
        for index, convert in self.processors:
            columns[index] = list(map(convert, columns[index]))
        return columns

    def _timestamps(self, timestamps: Sequence[float]) -> list[Any]:
        """POSIX timestamps as the driver takes the column (naive UTC)."""
        if not self.iso_text:
            convert_time = self.time_processor
            moments = [
                datetime.fromtimestamp(timestamp, UTC).replace(tzinfo=None)
                for timestamp in timestamps
            ]
            return moments if convert_time is None else list(map(convert_time, moments))
        # "YYYY-MM-DD HH:MM:SS" once per second of the batch, then the microseconds: a datetime
        # per row (made, made naive, formatted) cost more than the insert.
        micros = map(round, map(mul, timestamps, repeat(1_000_000)))
        seconds, fractions = zip(*map(divmod, micros, repeat(1_000_000)), strict=True)
        prefixes = {second: _second_text(second) for second in set(seconds)}
        texts = zip(map(prefixes.__getitem__, seconds), fractions, strict=True)
        return list(map(mod, repeat("%s.%06d"), texts))
