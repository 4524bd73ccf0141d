"""The audit trail: key and organization events, admin actions and refused attempts.

Each record is written to ``api_key_audit_log`` and logged on the ``flask_apikeys.audit``
logger with the same fields in ``extra``. Records are chained: each stores the hash of the one
before it (``previous_hash``, unique) and a hash of its own content and that link
(``record_hash``). Two writers that read the same head cannot both append after it (the second
insert violates the unique link and is retried on the new head), so the chain stays a single
line across processes. :func:`verify_chain` walks it and names the first record that was
edited, inserted or deleted. Only a key's prefix and hint are ever recorded, never the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import request
from sqlalchemy.exc import DataError, IntegrityError

from .keys import HINT_LENGTH, parse_key, redact_path
from .models import AuditRecord, utcnow
from .signals import SERVICE_EVENTS
from .storable import optional_storable_text, storable_json, storable_text

logger = logging.getLogger("flask_apikeys.audit")
GENESIS = "0" * 64
FIELDS = (
    "created_at",
    "event",
    "actor",
    "organization_id",
    "api_key_id",
    "key_prefix",
    "key_hint",
    "ip_address",
    "user_agent",
    "details",
)
#: Records written per transaction: a flood of refused keys must not fall behind.
APPEND_BATCH = 500
APPEND_ATTEMPTS = 20
#: Records :func:`verify_chain` reads per round trip: a trail of millions is walked with a
#: server-side cursor, never held in memory whole (psycopg and PyMySQL otherwise fetch it all).
VERIFY_BATCH = 1000
table: sa.Table = AuditRecord.__table__  # type: ignore[assignment]


def record_hash(values: Mapping[str, Any], previous_hash: str) -> str:
    """The hash that seals a record's content and its link to the previous record."""
    content = {field: values.get(field) for field in FIELDS}
    content["created_at"] = values["created_at"].isoformat()
    for field in ("organization_id", "api_key_id"):
        content[field] = None if content[field] is None else str(content[field])
    canonical = json.dumps({"previous": previous_hash, **content}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_record(
    event: str,
    *,
    actor: str | None = None,
    organization_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    key_prefix: str | None = None,
    key_hint: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    details: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The fields of one audit record, ready to append.

    Every text is made storable here (no NUL, no lone surrogate, cut to its column), and the
    details to JSON that every database takes: a record carries what a request sent (its
    path, its user agent), and one record the database refuses must not block the trail.
    """
    return {
        "created_at": created_at or utcnow(),
        "event": storable_text(event, 50),
        "actor": optional_storable_text(actor, 320),
        "organization_id": organization_id,
        "api_key_id": api_key_id,
        "key_prefix": optional_storable_text(key_prefix, 40),
        "key_hint": optional_storable_text(key_hint, 8),
        "ip_address": optional_storable_text(ip_address, 45),
        "user_agent": optional_storable_text(user_agent, 300),
        "details": storable_json(dict(details or {})),
    }


def append(connection_factory: Callable[[], Any], records: Iterable[dict[str, Any]]) -> None:
    """Append records to the chain, in order, up to ``APPEND_BATCH`` per transaction.

    Each batch links to the head it read; if another writer appended after that head first,
    the unique ``previous_hash`` refuses the batch and it is linked again to the new head. A
    batch the database refuses for what a record holds is halved until the record at fault is
    alone, and only that one is dropped, with a warning: the rest of the trail goes on.
    """
    pending = list(records)
    batches = [
        pending[start : start + APPEND_BATCH] for start in range(0, len(pending), APPEND_BATCH)
    ]
    batches.reverse()  # a stack: the next batch on top
    dropped = 0
    while batches:
        batch = batches.pop()
        try:
            _append_batch(connection_factory, batch)
        except (DataError, OverflowError, ValueError):
            if len(batch) == 1:
                dropped += 1
                continue
            middle = len(batch) // 2
            batches += (batch[middle:], batch[:middle])
    if dropped:
        logger.warning("flask-apikeys dropped %d audit records the database refused", dropped)


def _append_batch(connection_factory: Callable[[], Any], batch: list[dict[str, Any]]) -> None:
    """Append one batch in one transaction, linked again to the new head after a conflict."""
    for attempt in range(APPEND_ATTEMPTS):
        try:
            with connection_factory() as connection:
                head = connection.execute(
                    sa.select(table.c.record_hash).order_by(table.c.id.desc()).limit(1)
                ).scalar()
                connection.execute(sa.insert(table), chained(batch, head or GENESIS))
            break
        except IntegrityError:
            # Another writer appended after the same head: link to the new one, after a pause
            # of random length. Writers that all retried at once kept colliding: four threads
            # appending together once lost twenty times in a row on PostgreSQL.
            time.sleep(random.uniform(0.0005, 0.002) * (attempt + 1))  # noqa: S311 - jitter
    else:  # pragma: no cover - only under extreme contention
        raise RuntimeError("could not append to the audit chain")
    for values in batch:
        logged = {field: values[field] for field in FIELDS if field != "created_at"}
        logger.info("%s", values["event"], extra={"audit": logged})


def chained(batch: list[dict[str, Any]], previous: str) -> list[dict[str, Any]]:
    """The rows of ``batch``, each linked to the one before it, the first to ``previous``."""
    rows = []
    for values in batch:
        digest = record_hash(values, previous)
        rows.append({**values, "previous_hash": previous, "record_hash": digest})
        previous = digest
    return rows


@dataclass(frozen=True)
class ChainBreak:
    """The first record where the chain does not hold, and why."""

    record_id: int
    problem: str

    def __str__(self) -> str:
        return f"record {self.record_id}: {self.problem}"


def verify_chain(connection: Any) -> ChainBreak | None:
    """Walk the whole trail; return the first broken record, or ``None`` when it is intact."""
    previous = GENESIS
    walk = sa.select(table).order_by(table.c.id).execution_options(yield_per=VERIFY_BATCH)
    # Closed on the way out, at a break too: a server-side cursor left open is the server's.
    with connection.execute(walk) as result:
        for row in result.mappings():
            values = dict(row)
            if row["previous_hash"] != previous:
                return ChainBreak(
                    row["id"],
                    "its link does not match the record before it: a record was "
                    "deleted or inserted before it",
                )
            if record_hash(values, previous) != row["record_hash"]:
                return ChainBreak(row["id"], "its content was changed after it was written")
            previous = row["record_hash"]
    return None


class AuditTrail:
    """Writes one app's audit records; subscribed to the service's signals by ``init_app``."""

    def __init__(self, connection_factory: Callable[[], Any]) -> None:
        self._connect = connection_factory

    def record(self, event: str, **fields: Any) -> None:
        """Append one record now (admin actions, key events)."""
        append(self._connect, [build_record(event, **fields)])

    def subscribe(self, app: Any) -> None:
        """Record ``app``'s key and organization events: connect to their signals."""
        # Held here and connected weakly: the receivers go when the app (and this trail) go.
        self._receivers = [
            functools.partial(self.on_service_event, event) for event in SERVICE_EVENTS
        ]
        for receiver, signal in zip(self._receivers, SERVICE_EVENTS.values(), strict=True):
            signal.connect(receiver, app)

    def on_service_event(self, event: str, sender: Any = None, **details: Any) -> None:
        """Receiver of the key and organization signals (:mod:`flask_apikeys.signals`)."""
        api_key = details.pop("api_key", None)
        organization = details.pop("organization", None)
        previous = details.pop("previous", None)
        actor = details.pop("actor", None)
        if previous is not None:
            details["previous_key_id"] = str(previous.id)
        fields: dict[str, Any] = {"actor": actor, "details": details}
        if api_key is not None:
            fields.update(
                api_key_id=api_key.id,
                organization_id=api_key.organization_id,
                key_prefix=api_key.key_prefix,
                key_hint=api_key.key_hint,
            )
        elif organization is not None:
            fields.update(
                organization_id=organization.id, details={**details, "slug": organization.slug}
            )
        self.record(event, **fields)

    def verify(self) -> ChainBreak | None:
        """:func:`verify_chain` on this app's database."""
        with self._connect() as connection:
            return verify_chain(connection)


def attempt_record(
    error: Any, environ: dict[str, Any], address: str, presented: str | None
) -> dict[str, Any]:
    """An audit record for a refused authentication (prefix and hint only)."""
    parsed = None if presented is None else parse_key(presented)
    # The organization of the stored key refused (revoked, expired, ...), never one guessed
    # from the visible prefix, which anyone can write and other organizations' keys share.
    organization_id, api_key_id = None, None
    if error.refused_key is not None:
        api_key_id, organization_id = error.refused_key
    return build_record(
        "auth.expired" if error.error_code == "expired_api_key" else "auth.refused",
        organization_id=organization_id,
        api_key_id=api_key_id,
        ip_address=address or None,
        user_agent=environ.get("HTTP_USER_AGENT"),
        key_prefix=None if parsed is None else parsed.display_prefix,
        key_hint=None if parsed is None or presented is None else presented[-HINT_LENGTH:],
        details={
            "code": error.error_code,
            "method": request.method,
            "path": redact_path(request.path)[:300],
        },
    )
