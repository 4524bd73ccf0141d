"""The uncached key lookup: one SELECT compiled once, run on a connection kept for it.

A request whose key is not in the cache (most keys of a multi-tenant API send too rarely to
stay cached) pays for this lookup. Through the ORM session it cost about ten times SQLite's own
work: a connection checked out of the pool and back, a transaction begun and ended, the
statement's cache key derived again, and the session torn down after the request. Here the
statement is compiled once per database, run on the bare DB-API cursor of one connection each
process keeps in autocommit mode (no transaction is held between lookups, so every lookup sees
the latest commit), and the values converted by the columns' own SQLAlchemy types. While a
cursor-event listener is registered on the engine (tracing, query counting), the statement runs
as text through SQLAlchemy instead, so that the listener sees it.

Values that many keys share (their organization's columns, the scope lists) are converted once
and the converted value reused (:class:`CompiledLookup`'s ``shared_columns``), and the cursor
is opened once with the connection.

The kept connection is used by one thread at a time; a thread that finds it busy, a forked
child until it opens its own, and an in-memory SQLite database (whose pool shares one
connection with the session) take the session instead (:meth:`KeyLookup.first` returns
:data:`USE_SESSION`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from ..boundedcache import BoundedCache
from ..database_errors import database_unavailable
from ..forking import after_fork_in_child

#: What :meth:`KeyLookup.first` returns when the caller should run the query on the session.
USE_SESSION = object()
#: How many distinct values of each shared column keep their converted form.
MAX_SHARED_VALUES = 1024


#: A shared column's index, its conversion, and the converted values by their raw form.
SharedConversion = tuple[int, Callable[[Any], Any], BoundedCache[Any, Any]]


def immutable(value: Any) -> Any:
    """``value`` safe to hand to many rows: a list (a JSON array) becomes a tuple."""
    return tuple(value) if isinstance(value, list) else value


class CompiledLookup:
    """A SELECT compiled for one dialect: its SQL, parameter order and value conversions.

    :param shared_columns: the columns whose values repeat from row to row (an organization's
        fields, scope lists): each distinct value read is converted once, the result kept (a
        JSON array as a tuple, since every row holding it gets the same object).
    """

    def __init__(
        self,
        query: sa.Select[Any],
        dialect: sa.Dialect,
        shared_columns: frozenset[str] = frozenset(),
    ) -> None:
        compiled = query.compile(dialect=dialect)
        self.sql = compiled.string
        self.parameter_names = tuple(compiled.positiontup or ()) if dialect.positional else None
        self.bind_processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        columns = list(query.selected_columns)
        self.row_type: Callable[..., Any] = namedtuple(  # type: ignore[misc]
            "Row", [str(column.key) for column in columns]
        )
        # Only the columns that need converting (UUIDs, JSON, dates…): the rest pass as read.
        conversions = [
            (index, str(column.key), processor)
            for index, column in enumerate(columns)
            if (processor := column.type.dialect_impl(dialect).result_processor(dialect, None))
            is not None
        ]
        self.conversions = tuple(
            (index, processor)
            for index, name, processor in conversions
            if name not in shared_columns
        )
        #: (index, processor, the converted values seen so far by their raw form)
        self.shared_conversions: tuple[SharedConversion, ...] = tuple(
            (index, processor, BoundedCache(MAX_SHARED_VALUES))
            for index, name, processor in conversions
            if name in shared_columns
        )

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """``values`` bound for the driver: converted, and in order for a positional driver."""
        processors = self.bind_processors
        if processors:
            values = {
                name: processors[name](value) if name in processors else value
                for name, value in values.items()
            }
        if self.parameter_names is None:
            return values
        return tuple(values[name] for name in self.parameter_names)

    def row(self, raw: Any) -> Any:
        """A driver's row as a named tuple of Python values."""
        values = list(raw)
        for index, processor in self.conversions:
            value = values[index]
            if value is not None:
                values[index] = processor(value)
        for index, convert, converted in self.shared_conversions:
            value = values[index]
            if value is None:
                continue
            try:
                known = converted.get(value)
            except TypeError:  # a driver that parsed JSON itself: nothing to share it by
                values[index] = convert(value)
                continue
            if known is None:
                known = converted.put(value, immutable(convert(value)))
            values[index] = known
        return self.row_type(*values)


class KeyLookup:
    """Runs lookups on one connection per process kept for them (see the module's docstring).

    :param find_engine: returns the engine of the keys' table; called inside an app context
        on first use.
    :param shared_columns: see :class:`CompiledLookup`.
    """

    def __init__(
        self, find_engine: Callable[[], sa.Engine], shared_columns: frozenset[str] = frozenset()
    ) -> None:
        self._find_engine = find_engine
        self._shared_columns = shared_columns
        self._engine: sa.Engine | None = None
        self._connection: sa.Connection | None = None
        #: The bare DB-API cursor of ``_connection``, opened with it.
        self._cursor: Any = None
        self._inherited: sa.Connection | None = None
        self._compiled: dict[sa.Select[Any], CompiledLookup] = {}
        self._lock = threading.Lock()
        after_fork_in_child(self, KeyLookup._forget_after_fork)

    def first(self, query: sa.Select[Any], values: Mapping[str, Any]) -> Any:
        """The first row of ``query`` with ``values``, ``None``, or :data:`USE_SESSION`.

        A database that cannot be reached, after one retry on a fresh connection, is a 503.
        """
        if not self._lock.acquire(blocking=False):
            return USE_SESSION  # another thread is looking a key up: don't wait for it
        try:
            for attempt in (1, 2):
                connection = self._connection or self._open()
                if connection is None:
                    return USE_SESSION
                compiled = self._compiled.get(query)
                if compiled is None:
                    compiled = self._compiled[query] = CompiledLookup(
                        query, connection.dialect, self._shared_columns
                    )
                try:
                    raw = self._fetch_one(connection, self._cursor, compiled, values)
                except sa.exc.SQLAlchemyError as error:
                    self._discard()
                    if attempt == 2 or not isinstance(error, sa.exc.DBAPIError):
                        raise database_unavailable(error) from error
                    continue  # the kept connection may have died (a server restart): once more
                except connection.dialect.loaded_dbapi.Error as error:  # the bare cursor's
                    self._discard()
                    if attempt == 2:
                        raise database_unavailable(error) from error
                    continue
                return None if raw is None else compiled.row(raw)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._lock.release()

    @staticmethod
    def _fetch_one(
        connection: sa.Connection, cursor: Any, compiled: CompiledLookup, values: Mapping[str, Any]
    ) -> Any:
        """The driver's first row, on the bare DB-API cursor unless someone watches cursors.

        ``exec_driver_sql`` builds the result's metadata (every column's processor) on each
        call: about 290k instructions per lookup, more than the rest of a cache miss. It is
        taken only while a ``before_cursor_execute`` or ``after_cursor_execute`` listener is
        registered on the engine (tracing such as OpenTelemetry's, query counting), so that
        they still see every lookup; checked per call, as listeners come and go.

        The bare cursor is the connection's own, kept open between lookups; every row is read
        (the lookup finds one at most), so the statement is finished and holds no read lock.
        """
        # The engine's listeners (and those of every engine: the class's) are the ones that
        # matter: the kept connection is private, nobody can listen to it alone. Asking the
        # engine costs half of asking the connection, whose dispatch joins both.
        dispatch = connection.engine.dispatch
        if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
            # The statement as text: no compilation, no cache key; the events fire.
            return connection.exec_driver_sql(compiled.sql, compiled.parameters(values)).fetchone()
        cursor.execute(compiled.sql, compiled.parameters(values))
        rows = cursor.fetchall()
        return rows[0] if rows else None

    def close(self) -> None:
        """Give the kept connection back (the app is shutting down, or a test ends)."""
        with self._lock:
            self._discard(invalidate=False)

    def _open(self) -> sa.Connection | None:
        if self._engine is None:
            self._engine = self._find_engine()
            # The app disposing of its engine (shutdown, a test's cleanup) closes ours too: a
            # connection left open past its pool warns when collected (psycopg, pymysql).
            sa.event.listen(self._engine, "engine_disposed", self._on_engine_disposed)
        if isinstance(self._engine.pool, StaticPool | SingletonThreadPool):
            return None  # in-memory SQLite: one connection, shared with the session
        try:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sa.exc.SQLAlchemyError as error:
            raise database_unavailable(error) from error
        try:
            self._cursor = connection.connection.cursor()
        except Exception:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _on_engine_disposed(self, engine: sa.Engine) -> None:
        # The old pool is already disposed: closing would check our connection back into it,
        # open, forever. Invalidating closes the database connection itself.
        with self._lock:
            self._discard(invalidate=True)

    def _discard(self, *, invalidate: bool = True) -> None:
        connection, self._connection = self._connection, None
        cursor, self._cursor = self._cursor, None
        if connection is None:
            return
        # A connection that is gone already is what we want: nothing to report.
        with contextlib.suppress(Exception):
            cursor.close()
        with contextlib.suppress(Exception):
            if invalidate:
                connection.invalidate()
            connection.close()

    def _forget_after_fork(self) -> None:
        # The parent's socket: closing it here, or letting the pool reset it when it is
        # collected, would talk to the server on the parent's session. Kept, never used.
        self._inherited, self._connection = self._connection, None
        self._cursor = None
        self._lock = threading.Lock()
