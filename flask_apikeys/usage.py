"""Usage tracking: one row per authenticated request, written off the request's critical path.

The ``after_request`` step only appends a tuple to an in-memory queue. A daemon thread per app
writes the queue every ``APIKEYS_USAGE_FLUSH_INTERVAL`` seconds (or sooner when
``APIKEYS_USAGE_BATCH_SIZE`` rows wait) with one bulk ``INSERT`` and one atomic
``total_requests = total_requests + n`` update per key, on a connection of its own. The queue is
flushed at interpreter exit, which covers a graceful gunicorn shutdown (SIGTERM). A hard kill
(SIGKILL, power loss) loses what was queued since the last flush: at most one interval's rows.
``APIKEYS_USAGE_MODE = "sync"`` writes each request's row before the response instead.

If the database refuses a flush, the rows stay queued and are retried; past
``APIKEYS_USAGE_MAX_QUEUE`` rows the oldest are dropped and a warning says how many.
Refused authentication attempts are not usage (there is no key); they go to the audit trail
through the same writer.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import sqlalchemy as sa
from flask import Response, request

from .audit import append as append_audit
from .audit import build_record
from .keys import KEY_SEARCH_PATTERN
from .models import APIKey, APIKeyUsage
from .network import client_address

logger = logging.getLogger("flask_apikeys.usage")
usage_table: sa.Table = APIKeyUsage.__table__  # type: ignore[assignment]
keys_table: sa.Table = APIKey.__table__  # type: ignore[assignment]
START_ENVIRON_KEY = "flask_apikeys.started"
ERROR_ENVIRON_KEY = "flask_apikeys.error"
TOKENS_ENVIRON_KEY = "flask_apikeys.tokens"
COST_ENVIRON_KEY = "flask_apikeys.cost"
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
#: Where the row keeps the key's and the organization's ids, and its timestamp.
ID_COLUMNS = (0, 1)
TIMESTAMP_COLUMN = 2
#: 13 columns × 64 rows = 832 parameters, under the 999 that older SQLite builds allow.
ROWS_PER_STATEMENT = 64


def record_cost(*, tokens: int | None = None, cost_usd: float | None = None) -> None:
    """Attach tokens and cost to the current request's usage row (call it from a view)."""
    environ = request.environ
    if tokens is not None:
        environ[TOKENS_ENVIRON_KEY] = (environ.get(TOKENS_ENVIRON_KEY) or 0) + int(tokens)
    if cost_usd is not None:
        environ[COST_ENVIRON_KEY] = (environ.get(COST_ENVIRON_KEY) or 0.0) + float(cost_usd)


_SAMPLE_MOMENTS = (datetime(2024, 2, 29, 23, 59, 58, 123456), datetime(2030, 1, 2, 3, 4, 5))


def _iso_text(moment: datetime) -> str:
    return moment.isoformat(" ", "microseconds")


class InsertPlan:
    """How queued usage rows reach one dialect's driver, worked out once per dialect.

    A flush converts the rows itself with each column's bind processor and sends them as
    multi-row ``INSERT … VALUES (…), (…)`` statements of up to :data:`ROWS_PER_STATEMENT` rows:
    SQLAlchemy's per-row parameter handling and a statement per row (each one a release and
    re-acquisition of the GIL on SQLite, a round trip's worth of work on PostgreSQL) cost more
    than the database's own work for a row.
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
        if time_processor is not None and all(
            time_processor(moment) == _iso_text(moment) for moment in _SAMPLE_MOMENTS
        ):
            time_processor = _iso_text  # the same text (SQLite's), formatted in C
        self.time_processor = time_processor
        #: rows per statement → the statement's SQL and, for named parameters, their names.
        self._statements: dict[int, tuple[str, tuple[str, ...] | None]] = {}

    def statement(self, rows: int) -> tuple[str, tuple[str, ...] | None]:
        """The SQL inserting ``rows`` rows, and its parameter names (``None``: positional)."""
        statement = self._statements.get(rows)
        if statement is None:
            placeholder = dict.fromkeys(USAGE_FIELDS)
            compiled = (
                sa.insert(usage_table).values([placeholder] * rows).compile(dialect=self.dialect)
            )
            names = tuple(f"{name}_m{row}" for row in range(rows) for name in USAGE_FIELDS)
            positions = compiled.positiontup
            if positions is not None and tuple(positions) != names:
                raise RuntimeError(f"unexpected parameter order for {self.dialect.name}")
            statement = self._statements[rows] = (
                compiled.string,
                names if positions is None else None,
            )
        return statement

    def execute(self, connection: Any, rows: list[tuple[Any, ...]]) -> None:
        """Insert the queued rows on ``connection``."""
        converted = self.parameters(rows)
        start, total = 0, len(converted)
        while start < total:
            left = total - start
            # Whole statements of the largest size, then powers of two: at most a handful of
            # distinct statements to compile and cache.
            size = (
                ROWS_PER_STATEMENT if left >= ROWS_PER_STATEMENT else 1 << (left.bit_length() - 1)
            )
            sql, names = self.statement(size)
            values = tuple(chain.from_iterable(converted[start : start + size]))
            connection.exec_driver_sql(
                sql, values if names is None else dict(zip(names, values, strict=True))
            )
            start += size

    def parameters(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Each queued row (whose timestamp is still a float) as the driver takes it."""
        processors = self.processors
        convert_id = self.id_processor
        convert_time = self.time_processor
        # A batch holds few distinct ids, each the same object in every row (the snapshot's):
        # convert each once. id() is safe as a key: the rows keep the objects alive.
        ids: dict[int, Any] = {}
        parameters: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(row)
            if convert_id is not None:
                for index in ID_COLUMNS:
                    value = values[index]
                    converted = ids.get(id(value))
                    if converted is None:
                        converted = ids[id(value)] = convert_id(value)
                    values[index] = converted
            moment = datetime.fromtimestamp(row[TIMESTAMP_COLUMN], UTC).replace(tzinfo=None)
            values[TIMESTAMP_COLUMN] = moment if convert_time is None else convert_time(moment)
            for index, convert in processors:
                values[index] = convert(values[index])
            parameters.append(tuple(values))
        return parameters


class UsageWriter:
    """Queues usage rows and audit records of one app and writes them in batches."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        synchronous: bool,
        flush_interval: float,
        batch_size: int,
        max_queue: int,
    ) -> None:
        self._connect = connect
        self.synchronous = synchronous
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_queue = max_queue
        self._usage: deque[tuple[Any, ...]] = deque()
        self._audit: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._plans: dict[str, InsertPlan] = {}
        writers = weakref.WeakSet([self])

        def close_all() -> None:
            for writer in list(writers):
                writer.close()

        atexit.register(close_all)

    def add_usage(self, row: tuple[Any, ...]) -> None:
        usage = self._usage
        usage.append(row)
        if self._thread is None or self.synchronous or len(usage) >= self.batch_size:
            self._after_add(len(usage))

    def add_audit(self, record: dict[str, Any]) -> None:
        self._audit.append(record)
        self._after_add(len(self._audit))

    def _after_add(self, queued: int) -> None:
        if self.synchronous:
            self.flush()
            return
        if self._thread is None:
            self._start()
        if queued >= self.batch_size:
            self._wake.set()

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="flask-apikeys-usage", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the writer must outlive a bad flush
                logger.exception("flask-apikeys could not write usage; will retry")

    def flush(self) -> int:
        """Write everything queued now; return how many usage rows were written."""
        with self._flush_lock:
            rows = [self._usage.popleft() for _ in range(len(self._usage))]
            audits = [self._audit.popleft() for _ in range(len(self._audit))]
            try:
                if rows:
                    self._write_usage(rows)
            except Exception:
                self._requeue(rows, self._usage)
                self._requeue(audits, self._audit)
                raise
            try:
                if audits:
                    append_audit(self._connect, audits)
            except Exception:
                self._requeue(audits, self._audit)
                raise
            return len(rows)

    def _requeue(self, items: list[Any], queue: deque[Any]) -> None:
        queue.extendleft(reversed(items))
        excess = len(queue) - self.max_queue
        if excess > 0:
            for _ in range(excess):
                queue.pop()
            logger.warning("flask-apikeys dropped %d queued records: database unavailable", excess)

    def _write_usage(self, rows: list[tuple[Any, ...]]) -> None:
        per_key: dict[Any, list[Any]] = {}
        for row in rows:
            totals = per_key.setdefault(row[0], [0, row[2]])
            totals[0] += 1
            totals[1] = max(totals[1], row[2])
        last = keys_table.c.last_used_at
        with self._connect() as connection:
            self._insert_plan(connection.dialect).execute(connection, rows)
            connection.execute(
                sa.update(keys_table)
                .where(keys_table.c.id == sa.bindparam("key_id"))
                .values(
                    total_requests=keys_table.c.total_requests + sa.bindparam("count"),
                    last_used_at=sa.case(
                        (sa.or_(last.is_(None), last < sa.bindparam("seen")), sa.bindparam("seen")),
                        else_=last,
                    ),
                    last_request_at=sa.bindparam("seen"),
                ),
                [
                    {"key_id": key, "count": count, "seen": datetime.fromtimestamp(seen, UTC)}
                    for key, (count, seen) in per_key.items()
                ],
            )

    def _insert_plan(self, dialect: sa.Dialect) -> InsertPlan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = InsertPlan(dialect)
        return plan

    def close(self) -> None:
        """Stop the thread and write what is left (called at exit)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - at exit there is no one left to raise to
            logger.exception("flask-apikeys could not write its last usage rows")


def make_usage_recorder(state: Any) -> Callable[[Response, Any, dict[str, Any]], None]:
    """What the extension's ``after_request`` hook calls with the response, the request and its
    environ: queue a row for every request that a key authenticated."""
    from .auth import OUTCOME_ENVIRON_KEY
    from .identity import VerifiedKey

    add_usage = state.writer.add_usage
    trusted_proxies = state.settings.trusted_proxies

    def record_usage(response: Response, current_request: Any, environ: dict[str, Any]) -> None:
        key = environ.get(OUTCOME_ENVIRON_KEY)
        if isinstance(key, VerifiedKey):
            add_usage(usage_row(response, key, current_request, environ, trusted_proxies))

    return record_usage


def usage_row(
    response: Response,
    key: Any,
    current_request: Any,
    environ: dict[str, Any],
    trusted_proxies: int,
) -> tuple[Any, ...]:
    """The usage row of a finished request (the timestamp stays a float until written)."""
    started = environ.get(START_ENVIRON_KEY)
    elapsed_ms = 0.0 if started is None else (time.perf_counter() - started) * 1000
    rule = current_request.url_rule
    if rule is not None:
        endpoint = rule.rule
    else:
        endpoint = KEY_SEARCH_PATTERN.sub("[key]", current_request.path)
    error = environ.get(ERROR_ENVIRON_KEY)
    user_agent = environ.get("HTTP_USER_AGENT")
    address = client_address(environ, trusted_proxies)
    return (
        key.id,
        key.organization.id,
        time.time(),
        endpoint[:300],
        current_request.method[:10],
        response.status_code,
        round(elapsed_ms, 3),
        environ.get(TOKENS_ENVIRON_KEY),
        environ.get(COST_ENVIRON_KEY),
        address[:45] or None,
        None if user_agent is None else user_agent[:300],
        None if error is None else str(error.detail)[:500],
        None if error is None else error.error_code,
    )


def attempt_record(
    error: Any, environ: dict[str, Any], address: str, presented: str | None
) -> dict[str, Any]:
    """An audit record for a refused authentication (prefix and hint only)."""
    from .keys import HINT_LENGTH, parse_key

    parsed = None if presented is None else parse_key(presented)
    return build_record(
        "auth.expired" if error.error_code == "expired_api_key" else "auth.refused",
        ip_address=address or None,
        user_agent=environ.get("HTTP_USER_AGENT"),
        key_prefix=None if parsed is None else parsed.display_prefix,
        key_hint=None if parsed is None or presented is None else presented[-HINT_LENGTH:],
        details={
            "code": error.error_code,
            "method": request.method,
            "path": KEY_SEARCH_PATTERN.sub("[key]", request.path)[:300],
        },
    )
