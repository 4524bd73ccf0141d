"""Counters in the app's database (``APIKEYS_RATELIMIT_STORAGE_URI = "database"``): exact
limits across worker processes without Redis.

One short transaction takes from every counter of a request, or from none: it makes sure the
counters' rows exist, locks them (``SELECT … FOR UPDATE`` on PostgreSQL and MySQL; ``BEGIN
IMMEDIATE`` on SQLite, whose writers take turns), checks every limit with the arithmetic of
the in-memory counters and writes the new counts. Rows are locked in the order of their keys,
so two requests never wait for each other in a cycle.

A transaction per request would make the database the bottleneck, so these counters are
always wrapped in :class:`~.leases.LeasedCounters`: a key busy in a worker takes a block of
units in one transaction and hands them out from memory; a quiet key, or one near its limit,
takes one unit at a time and stays exact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ..config_parsers import DATABASE_STORAGE_URI
from ..models import RateLimitCounter
from . import windows
from .counters import Counter, Counters, Outcome

#: The storage URI that selects these counters.
DATABASE_URI = DATABASE_STORAGE_URI
#: Every this many transactions, rows whose windows are over are deleted.
SWEEP_EVERY = 1000

TABLE: sa.Table = RateLimitCounter.__table__  # type: ignore[assignment]
UPDATE_COUNTER = (
    TABLE.update()
    .where(TABLE.c.counter_key == sa.bindparam("key"))
    .values(
        window_start=sa.bindparam("start"),
        window_end=sa.bindparam("end"),
        request_count=sa.bindparam("count"),
        previous_count=sa.bindparam("previous"),
    )
)


class DatabaseCounters(Counters):
    """Counters in ``api_key_rate_limit_tracking``; see the module docstring."""

    errors = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._find_engine = engine
        self._found: Engine | None = None
        self._transactions = 0
        self._count_lock = threading.Lock()

    def take(self, counters: Sequence[Counter], amount: int = 1) -> Outcome:
        now = windows.now()
        keys = sorted({counter.key for counter in counters})
        with self._transaction() as connection:
            self._create_missing(connection, keys, now)
            select = sa.select(TABLE).where(TABLE.c.counter_key.in_(keys))
            if connection.dialect.name != "sqlite":
                select = select.order_by(TABLE.c.counter_key).with_for_update()
            rows = {row.counter_key: list(row[1:]) for row in connection.execute(select)}
            states = [_current(counter, rows[counter.key], now) for counter in counters]
            refused = next(
                (
                    index
                    for index, (counter, state) in enumerate(zip(counters, states, strict=True))
                    if _used(counter, state, now) + amount > counter.limit
                ),
                None,
            )
            if refused is None:
                for state in states:
                    state[2] += amount
                connection.execute(  # one statement for all rows (one round trip on psycopg)
                    UPDATE_COUNTER,
                    [
                        {
                            "key": counter.key,
                            "start": state[0],
                            "end": state[1],
                            "count": state[2],
                            "previous": state[3],
                        }
                        for counter, state in zip(counters, states, strict=True)
                    ],
                )
                self._maybe_sweep(connection, now)
        values = []
        resets = []
        for index, (counter, state) in enumerate(zip(counters, states, strict=True)):
            value, reset = _view(counter, state, now, amount if index == refused else 0)
            values.append(value)
            resets.append(reset)
        return Outcome(refused, tuple(values), tuple(resets))

    def give_back(
        self, counters: Sequence[Counter], units: int, resets: Sequence[float], taken_at: float
    ) -> None:
        """Return a lease's unused units, to the window they were taken in only (a fixed
        window by its end, a sliding one by its start); best effort: a failure abandons them."""
        try:
            with self._transaction() as connection:
                for counter, reset in zip(counters, resets, strict=True):
                    same_window = (
                        TABLE.c.window_start
                        == windows.window_start(taken_at, counter.window_seconds)
                        if counter.sliding
                        else TABLE.c.window_end == reset
                    )
                    connection.execute(
                        TABLE.update()
                        .where(
                            TABLE.c.counter_key == counter.key,
                            same_window,
                            TABLE.c.request_count >= units,
                        )
                        .values(request_count=TABLE.c.request_count - units)
                    )
        except self.errors:
            return

    def peek(self, counter: Counter) -> tuple[int, float]:
        now = windows.now()
        with self._engine().connect() as connection:
            row = connection.execute(
                sa.select(TABLE).where(TABLE.c.counter_key == counter.key)
            ).first()
        state = [now, now + counter.window_seconds, 0, 0] if row is None else list(row[1:])
        return _view(counter, _current(counter, state, now), now)

    # -- transactions --------------------------------------------------------------------------

    def _engine(self) -> Engine:
        """The app's engine, found on first use (Flask-SQLAlchemy builds it lazily)."""
        if self._found is None:
            self._found = self._find_engine()
        return self._found

    def _transaction(self) -> Any:
        engine = self._engine()
        if engine.dialect.name == "sqlite":
            return _ImmediateTransaction(engine)
        return engine.begin()

    def _create_missing(self, connection: Connection, keys: list[str], now: float) -> None:
        """Insert the rows that do not exist yet, ignoring those another worker just made."""
        rows = [
            {
                "counter_key": key,
                "window_start": now,
                "window_end": now,
                "request_count": 0,
                "previous_count": 0,
            }
            for key in keys
        ]
        dialect = connection.dialect.name
        if dialect == "postgresql":
            connection.execute(postgresql.insert(TABLE).on_conflict_do_nothing(), rows)
        elif dialect == "sqlite":
            connection.execute(sqlite.insert(TABLE).on_conflict_do_nothing(), rows)
        else:  # MySQL, MariaDB
            connection.execute(TABLE.insert().prefix_with("IGNORE"), rows)

    def _maybe_sweep(self, connection: Connection, now: float) -> None:
        """Now and then, delete counters whose last window is over (a sliding one's count
        still weighs for a window after its own)."""
        with self._count_lock:
            self._transactions += 1
            if self._transactions % SWEEP_EVERY:
                return
        connection.execute(
            TABLE.delete().where(
                TABLE.c.window_end + (TABLE.c.window_end - TABLE.c.window_start) < now
            )
        )


class _ImmediateTransaction:
    """``BEGIN IMMEDIATE`` on SQLite: the write lock at the start, so two workers that read
    the same counters cannot both write (a deferred transaction would fail to upgrade)."""

    def __init__(self, engine: Engine) -> None:
        self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def __enter__(self) -> Connection:
        try:
            self._connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._connection.close()
            raise
        return self._connection

    def __exit__(self, error_type: Any, error: Any, traceback: Any) -> None:
        try:
            self._connection.exec_driver_sql("ROLLBACK" if error_type else "COMMIT")
        finally:
            self._connection.close()


def _current(counter: Counter, state: list[Any], now: float) -> list[Any]:
    """``[window start, window end, count, previous count]`` as of ``now``."""
    window = counter.window_seconds
    start, end, count, previous = state
    if counter.sliding:
        aligned = windows.window_start(now, window)
        if start == aligned:
            return [start, aligned + window, count, previous]
        return [aligned, aligned + window, 0, count if start == aligned - window else 0]
    if end <= now or count == 0:  # a new fixed window starts at its first request
        return [now, now + window, 0, 0]
    return [start, end, count, 0]


def _used(counter: Counter, state: list[Any], now: float) -> float:
    start, _, count, previous = state
    if counter.sliding:
        return windows.estimate(previous, count, now, start, counter.window_seconds)
    return float(count)


def _view(
    counter: Counter, state: list[Any], now: float, refused_amount: int = 0
) -> tuple[int, float]:
    start, end, count, previous = state
    if counter.sliding:
        return windows.sliding_view(
            counter.limit, counter.window_seconds, start, previous, count, now, refused_amount
        )
    return int(count), end
