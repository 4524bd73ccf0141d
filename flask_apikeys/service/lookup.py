"""The uncached key lookup: one SELECT compiled once, run on a connection kept for it.

A request whose key is not in the cache (most keys of a multi-tenant API send too rarely to
stay cached) pays for this lookup. Through the ORM session it cost about ten times SQLite's own
work: a connection checked out of the pool and back, a transaction begun and ended, the
statement's cache key derived again, and the session torn down after the request. Here the
statement is compiled once per database, run as text on one connection each process keeps in
autocommit mode (no transaction is held between lookups, so every lookup sees
the latest commit), and the values converted by the columns' own SQLAlchemy types.

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

from ..errors import BackendUnavailable
from ..forking import after_fork_in_child

#: What :meth:`KeyLookup.first` returns when the caller should run the query on the session.
USE_SESSION = object()


class CompiledLookup:
    """A SELECT compiled for one dialect: its SQL, parameter order and value conversions."""

    def __init__(self, query: sa.Select[Any], dialect: sa.Dialect) -> None:
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
        self.result_processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]

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
        values = [
            value if processor is None or value is None else processor(value)
            for processor, value in zip(self.result_processors, raw, strict=True)
        ]
        return self.row_type(*values)


class KeyLookup:
    """Runs lookups on one connection per process kept for them (see the module's docstring).

    :param find_engine: returns the engine of the keys' table; called inside an app context
        on first use.
    """

    def __init__(self, find_engine: Callable[[], sa.Engine]) -> None:
        self._find_engine = find_engine
        self._engine: sa.Engine | None = None
        self._connection: sa.Connection | None = None
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
                    compiled = self._compiled[query] = CompiledLookup(query, connection.dialect)
                try:
                    # The statement as text: no compilation, no cache key; SQLAlchemy's cursor
                    # events still fire (tracing and query counting see the lookup).
                    raw = connection.exec_driver_sql(
                        compiled.sql, compiled.parameters(values)
                    ).fetchone()
                except sa.exc.SQLAlchemyError as error:
                    self._discard()
                    if attempt == 2 or not isinstance(error, sa.exc.DBAPIError):
                        raise BackendUnavailable(
                            "The key database could not be reached; try again."
                        ) from error
                    continue  # the kept connection may have died (a server restart): once more
                return None if raw is None else compiled.row(raw)
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._lock.release()

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
            raise BackendUnavailable("The key database could not be reached; try again.") from error
        self._connection = connection
        return connection

    def _on_engine_disposed(self, engine: sa.Engine) -> None:
        # The old pool is already disposed: closing would check our connection back into it,
        # open, forever. Invalidating closes the database connection itself.
        with self._lock:
            self._discard(invalidate=True)

    def _discard(self, *, invalidate: bool = True) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # A connection that is gone already is what we want: nothing to report.
        with contextlib.suppress(Exception):
            if invalidate:
                connection.invalidate()
            connection.close()

    def _forget_after_fork(self) -> None:
        # The parent's socket: closing it here, or letting the pool reset it when it is
        # collected, would talk to the server on the parent's session. Kept, never used.
        self._inherited, self._connection = self._connection, None
        self._lock = threading.Lock()
