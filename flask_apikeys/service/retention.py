"""Keeping the database's size in check: pruning usage, backfilling rollups, purging old keys.

The work itself is :mod:`flask_apikeys.usage.retention` and :mod:`flask_apikeys.usage.backfill`;
this part reads the settings, validates what a caller asks, and runs each step in short
transactions of its own on the app's engine (never the request's session, never a long lock).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidInput
from ..models import APIKey, APIKeyUsage
from ..usage import backfill, retention
from .store import Store

keys_table: sa.Table = APIKey.__table__  # type: ignore[assignment]
usage_table: sa.Table = APIKeyUsage.__table__  # type: ignore[assignment]
#: Keys deleted per transaction by a purge.
PURGE_BATCH = 200


def as_utc_moment(value: date | datetime, field: str) -> datetime:
    """A date (its UTC midnight) or an aware datetime, as an aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(errors={field: ["a date, or a time with its UTC offset"]})
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise InvalidInput(errors={field: ["a date"]})


class Retention:
    """Usage retention, rollup backfill and the purge of expired and revoked keys."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _connect(self) -> Any:
        """A transaction of its own on the app's engine."""
        return self.store.session.get_bind().engine.begin()

    def prune_usage(
        self,
        *,
        raw_days: int | None = None,
        rollup_days: int | None = None,
        batch_size: int = retention.DEFAULT_BATCH_SIZE,
        pause: float = 0.0,
    ) -> retention.PruneReport:
        """Delete raw usage rows older than ``raw_days`` and rollups older than
        ``rollup_days`` (by default ``APIKEYS_USAGE_RETENTION_DAYS`` and
        ``APIKEYS_USAGE_ROLLUP_RETENTION_DAYS``; unset keeps them), ``batch_size`` rows per
        transaction."""
        settings = self.store.settings
        raw_days = settings.usage_retention_days if raw_days is None else raw_days
        if rollup_days is None:
            rollup_days = settings.usage_rollup_retention_days
        errors = {
            name: ["a whole number of days, 1 or more"]
            for name, days in (("raw_days", raw_days), ("rollup_days", rollup_days))
            if days is not None and not (isinstance(days, int) and 1 <= days <= 36_500)
        }
        if not (isinstance(batch_size, int) and 1 <= batch_size <= 1_000_000):
            errors["batch_size"] = ["1 to 1000000"]
        if errors:
            raise InvalidInput(errors=errors)
        raw_before, rollups_before = retention.cutoffs(raw_days, rollup_days)
        return retention.prune_usage(
            self._connect,
            raw_before=raw_before,
            rollups_before=rollups_before,
            batch_size=batch_size,
            pause=pause,
        )

    def backfill_rollups(
        self,
        *,
        since: date | datetime | None = None,
        until: date | datetime | None = None,
        progress: Callable[[datetime], None] | None = None,
    ) -> backfill.BackfillReport:
        """See :func:`flask_apikeys.usage.backfill.backfill_rollups`."""
        start = None if since is None else as_utc_moment(since, "since")
        end = None if until is None else as_utc_moment(until, "until")
        if start is not None and end is not None and end <= start:
            raise InvalidInput(errors={"until": ["after since"]})
        return backfill.backfill_rollups(self._connect, since=start, until=end, progress=progress)

    def purge_keys(
        self,
        *,
        revoked_before: date | datetime | None = None,
        expired_before: date | datetime | None = None,
        dry_run: bool = False,
        actor: str | None = None,
    ) -> list[dict[str, Any]]:
        """Delete the keys revoked before ``revoked_before`` or expired before
        ``expired_before``, with their raw usage rows; return what each was.

        What stays: their rollups (the organization's usage history, billed on), and the audit
        trail, whose records name a key by id, prefix and hint without a foreign key, so the
        hash chain is untouched; each purge appends a ``key.purged`` record.
        """
        if revoked_before is None and expired_before is None:
            raise InvalidInput(
                "Give revoked_before, expired_before or both.",
                errors={"revoked_before": ["required without expired_before"]},
            )
        now = datetime.now(UTC)
        conditions = []
        for field, value, column in (
            ("revoked_before", revoked_before, keys_table.c.revoked_at),
            ("expired_before", expired_before, keys_table.c.expires_at),
        ):
            if value is None:
                continue
            moment = as_utc_moment(value, field)
            if moment > now:
                raise InvalidInput(errors={field: ["not in the future"]})
            conditions.append(sa.and_(column.is_not(None), column < moment))
        session = self.store.session
        doomed = sa.or_(*conditions)
        purged: list[dict[str, Any]] = []
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            # A batch at a time, after the last one's (created_at, id): a purge of 100,000 keys
            # held every key's record at once (5 KB each), dry or not.
            batch = self._next_batch(doomed, after)
            if not batch:
                break
            after = (batch[-1].created_at, batch[-1].id)
            purged.extend(
                {
                    "id": str(key.id),
                    "organization_id": str(key.organization_id),
                    "key_prefix": key.key_prefix,
                    "key_hint": key.key_hint,
                    "revoked_at": key.revoked_at,
                    "expires_at": key.expires_at,
                }
                for key in batch
            )
            for key in batch:
                # Detached, with what the audit record reads still loaded: the commit below
                # would expire them, and their rows will be gone.
                session.expunge(key)
            if dry_run:
                continue
            self._purge(session, [key.id for key in batch])
            for key in batch:
                self.store.notify("key.purged", api_key=key, actor=actor)
        if dry_run:
            session.rollback()
        return purged

    def _next_batch(
        self, doomed: sa.ColumnElement[bool], after: tuple[datetime, uuid.UUID] | None
    ) -> list[APIKey]:
        """The next :data:`PURGE_BATCH` keys to purge, oldest first, after ``after``."""
        query = sa.select(APIKey).where(doomed)
        if after is not None:
            query = query.where(sa.tuple_(APIKey.created_at, APIKey.id) > after)
        query = query.order_by(APIKey.created_at, APIKey.id).limit(PURGE_BATCH)
        return self.store.read(lambda: list(self.store.session.scalars(query)))

    def _purge(self, session: Any, key_ids: list[uuid.UUID]) -> None:
        """Delete the keys' raw usage rows (in batches), then the keys, in one transaction."""
        retention.delete_all(
            self._connect,
            usage_table,
            usage_table.c.api_key_id.in_(key_ids),
            by=usage_table.c.api_key_id,
        )

        def delete() -> None:
            # Keys these replaced point at them (ON DELETE SET NULL, which SQLite enforces
            # only with its foreign keys on): clear the links here.
            session.execute(
                sa.update(keys_table)
                .where(keys_table.c.replaced_by_id.in_(key_ids))
                .values(replaced_by_id=None)
            )
            session.execute(sa.delete(keys_table).where(keys_table.c.id.in_(key_ids)))

        self.store.commit(delete)
        for key_id in key_ids:
            self.store.cache.forget_key(key_id)
