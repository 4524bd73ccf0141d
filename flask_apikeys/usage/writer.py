"""Usage tracking: one row per authenticated request, written off the request's critical path.

The response step (:mod:`flask_apikeys.hooks`) only appends a tuple to an in-memory queue. A
daemon thread per app writes the queue every ``APIKEYS_USAGE_FLUSH_INTERVAL`` seconds (or
sooner when ``APIKEYS_USAGE_BATCH_SIZE`` rows wait) with one bulk ``INSERT`` and an atomic
``total_requests = total_requests + n`` update of each key (many keys per statement where the
database joins one with their values: :mod:`.key_counters`), on a connection of its own. The
queue is flushed at interpreter exit, which covers a graceful gunicorn shutdown (SIGTERM). A
hard kill (SIGKILL, power loss) loses what was queued since the last flush: at most one
interval's rows.
``APIKEYS_USAGE_MODE = "sync"`` writes each request's row before the response instead.

If the database cannot be reached, the rows stay queued and are retried; past
``APIKEYS_USAGE_MAX_QUEUE`` rows the oldest are dropped and a warning says how many.
Each row is handed to :data:`~flask_apikeys.signals.usage_rows_taken` once, when a flush (or
:meth:`UsageWriter.hand_over`) first takes it, before it is written: a receiver (the
Prometheus metrics) counts the requests even when the database is down and the rows are
later dropped. Rows it
refuses for what they hold are found by halving the batch and dropped alone, with a warning;
every value taken from a request is made storable when it is captured, so that stays rare.
Refused authentication attempts are not usage (there is no key); they go to the audit trail
through the same writer, repeats of one attempt between two flushes as one record with their
count (:mod:`flask_apikeys.refusals`).
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import Any

import sqlalchemy as sa

from .. import signals
from ..audit import append as append_audit
from ..database_errors import SET_UP_TABLES, lacks_tables
from ..forking import after_fork_in_child
from ..models import APIKey
from ..refusals import Attempt, RefusalTally
from ..storable import ROW_ERRORS
from .insert import USAGE_FIELDS, InsertPlan
from .rollups import prepare_rollups, write_rollups

logger = logging.getLogger("flask_apikeys.usage")
keys_table: sa.Table = APIKey.__table__  # type: ignore[assignment]
_KEY_ID = itemgetter(0)  # of a queued usage row
_TIMESTAMP = itemgetter(2)
_NUMBER = attrgetter("int")  # of a UUID
_STATUS = 5
#: A queued row's stored columns (:data:`~.insert.USAGE_FIELDS`); what follows them is for
#: :data:`~flask_apikeys.signals.usage_rows_taken`'s receivers only (:mod:`.rows`).
_STORED = itemgetter(slice(0, len(USAGE_FIELDS)))
#: What ``APIKEYS_USAGE_RAW_ROWS`` may say: which requests keep a raw row besides rollups.
RAW_ROW_CHOICES = ("all", "errors", "none")
_last_used = keys_table.c.last_used_at
#: Adds a flush's requests to a key's total and moves its last-use times forward, never back
#: (rows from several processes arrive out of order). Built once: it is the same every flush.
_ADD_REQUESTS = (
    sa.update(keys_table)
    .where(keys_table.c.id == sa.bindparam("key_id"))
    .values(
        total_requests=keys_table.c.total_requests + sa.bindparam("count"),
        last_used_at=sa.case(
            (
                sa.or_(_last_used.is_(None), _last_used < sa.bindparam("seen")),
                sa.bindparam("seen"),
            ),
            else_=_last_used,
        ),
        last_request_at=sa.bindparam("seen"),
    )
)


#: Tries of a flush whose transaction the database rolled back to break a deadlock.
DEADLOCK_ATTEMPTS = 5
#: What drivers say for a deadlock victim: MySQL/MariaDB error 1213, PostgreSQL's SQLSTATE.
_DEADLOCK_CODES = {1213, "40P01", "40001"}


def _is_deadlock(error: sa.exc.DBAPIError) -> bool:
    original = error.orig
    code = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if code is None and original is not None and original.args:
        code = original.args[0]
    return code in _DEADLOCK_CODES


def log_failed_flush(error: Exception, message: str = "could not write usage; will retry") -> None:
    """Log a flush that failed: tables that are missing say what to run (a traceback every
    second would not), anything else with its traceback."""
    if lacks_tables(error):
        logger.error("flask-apikeys %s: %s", message, SET_UP_TABLES)
    else:
        logger.exception("flask-apikeys %s", message)


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
        raw_rows: str = "all",
    ) -> None:
        if raw_rows not in RAW_ROW_CHOICES:
            raise ValueError(f"raw_rows must be one of {RAW_ROW_CHOICES}, not {raw_rows!r}")
        self._connect = connect
        #: Which requests keep a raw row: ``all``, ``errors`` (status 400 and above), ``none``.
        self.raw_rows = raw_rows
        #: Called after each flush that wrote rows (the retention's batch pruning), or ``None``.
        self.after_flush: Callable[[], None] | None = None
        self.synchronous = synchronous
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_queue = max_queue
        self._usage: deque[tuple[Any, ...]] = deque()
        #: How many rows at the front of the usage queue were sent with usage_rows_taken
        #: already (rows put back after a failed write, or handed over); under _take_lock.
        self._handed_over = 0
        self._audit: deque[dict[str, Any]] = deque()
        self._refusals = RefusalTally()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        #: Held while rows leave or re-enter the front of the usage queue, and while they are
        #: handed to the signal: a flush's write does not hold it, so a scrape never waits for
        #: the database.
        self._take_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._plans: dict[str, InsertPlan] = {}
        writers = weakref.WeakSet([self])

        def close_all() -> None:
            for writer in list(writers):
                writer.close()

        atexit.register(close_all)
        after_fork_in_child(self, UsageWriter._start_afresh)

    def _start_afresh(self) -> None:
        """In a forked child (gunicorn ``--preload``): the parent writes what it queued, and its
        writer thread and locks did not come along, so start with none of them."""
        self._usage = deque()
        self._handed_over = 0
        self._audit = deque()
        self._refusals = RefusalTally()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._take_lock = threading.Lock()
        self._thread = None

    def add_usage(self, row: tuple[Any, ...]) -> None:
        usage = self._usage
        usage.append(row)
        if self._thread is None or self.synchronous or len(usage) >= self.batch_size:
            self._after_add(len(usage))

    @property
    def queued(self) -> int:
        """Usage rows waiting to be written."""
        return len(self._usage)

    def hand_over(self) -> int:
        """Send :data:`~flask_apikeys.signals.usage_rows_taken` now for the rows queued that
        no flush took yet, and leave them queued (a scrape calls it, so that this process's
        requests are counted at once); return how many were sent."""
        with self._take_lock:
            usage = self._usage
            # Taken and put back from the front: requests append at the other end meanwhile.
            rows = [usage.popleft() for _ in range(len(usage))]
            usage.extendleft(reversed(rows))
            fresh = rows[self._handed_over :]
            self._handed_over = len(rows)
            self._announce(fresh)
        return len(fresh)

    def _announce(self, rows: list[tuple[Any, ...]]) -> None:
        """Send :data:`~flask_apikeys.signals.usage_rows_taken` for rows never sent before
        (the caller holds the take lock: each row is sent once)."""
        if not rows or not signals.usage_rows_taken.receivers:
            return
        try:
            signals.usage_rows_taken.send(self, rows=tuple(rows))
        except Exception:  # noqa: BLE001 - a receiver must not cost the rows
            logger.exception("flask-apikeys: a usage_rows_taken receiver failed")

    def add_audit(self, record: dict[str, Any]) -> None:
        self._audit.append(record)
        self._after_add(len(self._audit))

    def add_refusal(self, attempt: Attempt, build_record: Callable[[], dict[str, Any]]) -> None:
        """Count a refused attempt: its audit record (built once, by ``build_record``) is written
        by the next flush with the number of times ``attempt`` was refused until then."""
        if self._refusals.add(attempt, build_record) or self.synchronous or self._stopped:
            self._after_add(len(self._refusals) + len(self._audit))

    def _after_add(self, queued: int) -> None:
        if self.synchronous or self._stopped:  # closed: no thread will write it later
            try:
                self.flush()
            except Exception as error:  # noqa: BLE001 - recording must never fail the request
                log_failed_flush(error)
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
            except Exception as error:  # noqa: BLE001 - the writer must outlive a bad flush
                log_failed_flush(error)

    def flush(self) -> int:
        """Write everything queued now; return how many usage rows were written.

        Rows the database refuses for what they hold are dropped (with a warning) and the
        others written; when the database cannot be reached, everything stays queued.
        """
        with self._flush_lock:
            with self._take_lock:
                rows = [self._usage.popleft() for _ in range(len(self._usage))]
                handed_over, self._handed_over = self._handed_over, 0
                self._announce(rows[handed_over:] if handed_over else rows)
            audits = [self._audit.popleft() for _ in range(len(self._audit))]
            audits += self._refusals.take()
            written = 0
            try:
                if rows:
                    written = self._write_usage_isolating(rows)
            except Exception:
                self._requeue(audits, self._audit)
                raise
            try:
                if audits:
                    append_audit(self._connect, audits)
            except Exception:
                self._requeue(audits, self._audit)
                raise
        if written and self.after_flush is not None:
            try:
                self.after_flush()
            except Exception:  # noqa: BLE001 - pruning must never stop the writing
                logger.exception("flask-apikeys could not prune old usage; will retry")
        return written

    def _write_usage_isolating(self, rows: list[tuple[Any, ...]]) -> int:
        """Write ``rows``; when a batch is refused for its data, halve it until the rows at
        fault are alone, and drop only those.

        A row whose key was deleted since the request breaks a foreign key for good, and a
        value the database refuses is refused forever: retrying the whole batch would block
        every row behind it, and in sync mode fail every request after it. Any other failure
        (the database is down) puts back in the queue what was not written, and raises.
        """
        pending = [rows]  # a stack of slices, the next to write on top, in queue order
        written = dropped = 0
        while pending:
            batch = pending.pop()
            try:
                self._write_usage_retrying(batch)
            except ROW_ERRORS:
                if len(batch) == 1:
                    dropped += 1
                    continue
                middle = len(batch) // 2
                pending += (batch[middle:], batch[:middle])
                continue
            except Exception:
                left = batch + [row for later in reversed(pending) for row in later]
                self._requeue_usage(left)
                raise
            written += len(batch)
        signals.usage_rows_written.send(self, count=written, dropped=dropped)
        if dropped:
            logger.warning(
                "flask-apikeys dropped %d usage rows the database refused "
                "(their key is gone, or a value it cannot store)",
                dropped,
            )
        return written

    def _requeue(self, items: list[Any], queue: deque[Any]) -> None:
        queue.extendleft(reversed(items))
        excess = len(queue) - self.max_queue
        if excess > 0:
            for _ in range(excess):
                queue.pop()
            logger.warning("flask-apikeys dropped %d queued records: database unavailable", excess)

    def _requeue_usage(self, rows: list[tuple[Any, ...]]) -> None:
        """Put back at the front the rows a failed write left (sent with usage_rows_taken
        already); past ``max_queue`` rows, drop the oldest, as documented."""
        with self._take_lock:
            usage = self._usage
            usage.extendleft(reversed(rows))
            self._handed_over += len(rows)
            excess = len(usage) - self.max_queue
            if excess <= 0:
                return
            # From the front, where nothing else takes or adds meanwhile (we hold the lock):
            # the first rows dropped were sent; any beyond them are sent now, so every request
            # is counted before its row goes.
            dropped = [usage.popleft() for _ in range(excess)]
            self._announce(dropped[self._handed_over :])
            self._handed_over = max(0, self._handed_over - excess)
        if signals.usage_rows_written.receivers:
            signals.usage_rows_written.send(self, count=0, dropped=excess)
        logger.warning("flask-apikeys dropped %d queued usage rows: database unavailable", excess)

    def _write_usage_retrying(self, rows: list[tuple[Any, ...]]) -> None:
        """:meth:`_write_usage`, again at once when the database chose it as a deadlock's
        victim: two flushes adding to the same rollup rows (MySQL's and MariaDB's upsert takes
        gap locks) is a collision that passes, not an outage; the transaction left nothing."""
        for attempt in range(DEADLOCK_ATTEMPTS):
            try:
                self._write_usage(rows)
                return
            except sa.exc.OperationalError as error:
                if attempt + 1 == DEADLOCK_ATTEMPTS or not _is_deadlock(error):
                    raise
                time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))  # noqa: S311 - jitter

    def _write_usage(self, rows: list[tuple[Any, ...]]) -> None:
        if max(map(len, rows)) > len(USAGE_FIELDS):
            rows = list(map(_STORED, rows))  # without what only the signal's receivers read
        # Per key, by its id's number (hashed in C; a UUID's hash is Python code): how many
        # rows, and the latest.
        key_ids = list(map(_KEY_ID, rows))
        key_numbers = list(map(_NUMBER, key_ids))
        counts = Counter(key_numbers)
        ids = dict(zip(key_numbers, key_ids, strict=True))
        latest: dict[int, float] = {}
        for number, seen in zip(key_numbers, map(_TIMESTAMP, rows), strict=True):
            if seen > latest.get(number, 0.0):
                latest[number] = seen
        if self.raw_rows == "all":
            raw = rows
        elif self.raw_rows == "errors":
            raw = [row for row in rows if row[_STATUS] >= 400]
        else:
            raw = []
        with self._connect() as connection:
            # One transaction: the raw rows and the rollups that count them, or neither. The
            # keys first, in one order in every process: their row locks then queue two
            # flushes of the same key (on MySQL and MariaDB a foreign key check's shared lock
            # taken before would make two flushes deadlock on the update).
            plan = self._insert_plan(connection.dialect)
            prepare_rollups(connection.dialect)  # compiled before the first write's lock
            texts = plan.id_texts(rows)  # each id converted once, for all three
            plan.add_requests(
                connection,
                _ADD_REQUESTS,
                [
                    # In the order of the ids' numbers, which is their text's.
                    (ids[number], count, latest[number])
                    for number, count in sorted(counts.items())
                ],
                texts,
            )
            plan.execute(connection, raw, texts)
            write_rollups(connection, rows, texts)

    def _insert_plan(self, dialect: sa.Dialect) -> InsertPlan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = InsertPlan(dialect)
        return plan

    def close(self) -> None:
        """Stop the thread and write what is left (``APIKeys.close()``, and at exit); rows
        added afterwards are written at once."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None  # so that add_usage() hands each later row to _after_add()
        try:
            self.flush()
        except Exception as error:  # noqa: BLE001 - at exit there is no one left to raise to
            log_failed_flush(error, "could not write its last usage rows")
