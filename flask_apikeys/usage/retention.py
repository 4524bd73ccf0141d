"""Usage retention: raw rows and rollups older than their settings are deleted in small batches.

``APIKEYS_USAGE_RETENTION_DAYS`` bounds the raw rows, ``APIKEYS_USAGE_ROLLUP_RETENTION_DAYS``
the rollups (in whole UTC days, so a day row never outlives or predeceases its hours). Each
batch is one short transaction that deletes at most ``batch_size`` rows by their ids, found
through the index of the column the condition is on (the oldest first), so no statement holds
a lock on the table for long, the writer's inserts go on between batches, and finding that
nothing is left to delete reads nothing but that index. ``flask apikeys usage prune`` runs
them all; with ``APIKEYS_USAGE_PRUNE_IN_WRITER`` the writer runs one batch of each after a
flush, at most once per :data:`WRITER_PRUNE_INTERVAL` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..models import APIKeyUsage, APIKeyUsageRollup

logger = logging.getLogger("flask_apikeys.usage")
usage: sa.Table = APIKeyUsage.__table__  # type: ignore[assignment]
rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]
#: Rows one batch deletes at most: a few milliseconds of work, never a long lock.
DEFAULT_BATCH_SIZE = 1000
#: Seconds between two prunings by the writer.
WRITER_PRUNE_INTERVAL = 60.0


@dataclass
class PruneReport:
    """How many rows a pruning deleted, and the cut-offs it applied (``None``: kept)."""

    raw_before: datetime | None
    rollups_before: datetime | None
    raw_rows_deleted: int = 0
    rollup_rows_deleted: int = 0


def cutoffs(
    raw_days: int | None, rollup_days: int | None, now: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """The moments before which raw rows and rollups go: rollups at a UTC midnight."""
    now = now or datetime.now(UTC)
    raw_before = None if raw_days is None else now - timedelta(days=raw_days)
    rollups_before = None
    if rollup_days is not None:
        rollups_before = (now - timedelta(days=rollup_days)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
    return raw_before, rollups_before


def delete_batch(
    connect: Callable[[], Any],
    table: sa.Table,
    condition: sa.ColumnElement[bool],
    batch_size: int,
    *,
    by: sa.ColumnElement[Any],
) -> int:
    """Delete, in one transaction, up to ``batch_size`` of the rows that meet ``condition``,
    the first in the order of ``by``; return how many went.

    ``by`` is the indexed column ``condition`` is on (a timestamp, a key's id): the batch is
    read from that index. Read in the order of the ids instead, a table whose old rows were
    all gone was read whole to find none (every minute, by the writer's pruning).
    """
    batch = sa.select(table.c.id).where(condition).order_by(by).limit(batch_size).subquery()
    with connect() as connection:
        # The ids from a derived table: MySQL and MariaDB take no LIMIT directly inside IN.
        result = connection.execute(sa.delete(table).where(table.c.id.in_(sa.select(batch.c.id))))
        return int(result.rowcount)


def delete_all(
    connect: Callable[[], Any],
    table: sa.Table,
    condition: sa.ColumnElement[bool],
    *,
    by: sa.ColumnElement[Any],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
    pause: float = 0.0,
) -> int:
    """:func:`delete_batch` until no row meets ``condition`` (or ``max_batches`` ran)."""
    deleted = batches = 0
    while max_batches is None or batches < max_batches:
        count = delete_batch(connect, table, condition, batch_size, by=by)
        deleted += count
        batches += 1
        if count < batch_size:
            break
        if pause:
            time.sleep(pause)  # let the writer's transactions in between
    return deleted


def prune_usage(
    connect: Callable[[], Any],
    *,
    raw_before: datetime | None,
    rollups_before: datetime | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
    pause: float = 0.0,
) -> PruneReport:
    """Delete raw rows before ``raw_before`` and rollups before ``rollups_before`` (``None``:
    keep them), batch after batch until none is left (or ``max_batches`` of each)."""
    report = PruneReport(raw_before, rollups_before)
    if raw_before is not None:
        report.raw_rows_deleted = delete_all(
            connect,
            usage,
            usage.c.timestamp < raw_before,
            by=usage.c.timestamp,
            batch_size=batch_size,
            max_batches=max_batches,
            pause=pause,
        )
    if rollups_before is not None:
        report.rollup_rows_deleted = delete_all(
            connect,
            rollups,
            rollups.c.bucket_start < rollups_before,
            by=rollups.c.bucket_start,
            batch_size=batch_size,
            max_batches=max_batches,
            pause=pause,
        )
    return report


class WriterPruning:
    """What the usage writer calls after a flush (``APIKEYS_USAGE_PRUNE_IN_WRITER``): one batch
    of each retention, at most once per ``interval`` seconds."""

    def __init__(
        self,
        connect: Callable[[], Any],
        raw_days: int | None,
        rollup_days: int | None,
        *,
        interval: float = WRITER_PRUNE_INTERVAL,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.connect = connect
        self.raw_days = raw_days
        self.rollup_days = rollup_days
        self.interval = interval
        self.batch_size = batch_size
        self.last_run = float("-inf")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last_run < self.interval:
            return
        self.last_run = now
        raw_before, rollups_before = cutoffs(self.raw_days, self.rollup_days)
        report = prune_usage(
            self.connect,
            raw_before=raw_before,
            rollups_before=rollups_before,
            batch_size=self.batch_size,
            max_batches=1,
        )
        if report.raw_rows_deleted or report.rollup_rows_deleted:
            logger.info(
                "flask-apikeys pruned %d raw usage rows and %d rollup rows",
                report.raw_rows_deleted,
                report.rollup_rows_deleted,
            )
