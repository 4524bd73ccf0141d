"""Reads and deletes that stay small at a million rows, checked on small tables.

At 10,000 organizations, 100,000 keys and a million usage and audit rows
(``bench/bench_scale.py``), a statement that reads a whole table or sorts all of an
organization's rows costs seconds (and deleting an organization of 10,000 keys took 415 s on
PostgreSQL, for want of one index). The plans are the same on a few rows, so these tests run
each list, page and delete of the admin API, the CLI and the dashboard on SQLite, record its
statements, and read their plans (``EXPLAIN QUERY PLAN``): no statement may scan one of the
big tables or sort its rows without an index. The verified audit chain is read with a
server-side cursor on PostgreSQL and MariaDB (their drivers otherwise fetch it all: 606 MiB
for a million records).
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.dashboard.audit_log import AuditFilter, audit_page
from flask_apikeys.models import APIKeyUsage, metadata
from flask_apikeys.usage import retention

#: The tables that grow with traffic and tenants: never read whole, never sorted whole.
BIG_TABLES = (
    "organizations",
    "api_keys",
    "api_key_usage",
    "api_key_usage_rollups",
    "api_key_audit_log",
)
#: A scan of a big table in SQLite's plans: whole (``SCAN t``), or in an index's order
#: (``SCAN t USING INDEX i``), which only a page may do (it stops at its LIMIT), and a page's
#: total (``SCAN t USING COVERING INDEX i``, every entry of the smallest index, for its count).
SCAN = re.compile(rf"\bSCAN ({'|'.join(BIG_TABLES)})\b(?P<index> USING .*INDEX.*)?")


@contextmanager
def recorded(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent on ``engine`` meanwhile, with its parameters."""
    statements: list[tuple[str, Any]] = []

    def record(*arguments: Any) -> None:
        _, _, statement, parameters, _, _ = arguments
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def plans(app: Flask, operation: Callable[[], Any]) -> list[tuple[str, list[str]]]:
    """Run ``operation`` in an app context; each statement it sent, with its plan's lines."""
    with app.app_context():
        engine = app.extensions["sqlalchemy"].engine
        with recorded(engine) as statements:
            operation()
        explained = []
        with engine.connect() as connection:
            for statement, parameters in statements:
                rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                explained.append((statement, [str(row[-1]) for row in rows]))
        return explained


def whole_table_reads(explained: list[tuple[str, list[str]]]) -> list[str]:
    """The plan lines that read a big table whole, or sort rows no index found first."""
    found = []
    for statement, lines in explained:
        text = " ".join(statement.split())
        counting = text.upper().startswith("SELECT COUNT(*)")
        paged = " LIMIT " in text.upper()
        for line in lines:
            match = SCAN.search(line)
            if match and not (match["index"] and (paged or counting)):
                found.append(f"{line}   <- {text[:160]}")
            # Sorting is allowed only for what an index found first: a period's rollup groups.
            sorts_found_rows = "FROM api_key_usage_rollups" in text
            if "USE TEMP B-TREE FOR ORDER BY" in line and not sorts_found_rows:
                found.append(f"{line}   <- {text[:160]}")
    return found


@pytest.fixture
def tenants(app: Flask, apikeys: APIKeys) -> dict[str, Any]:
    """Two organizations with keys (some revoked, one rotated), their audit records, refused
    attempts with their stored keys, and guesses that only share their visible prefixes."""
    with app.app_context():
        plan = {"max_api_keys": 100}
        acme = apikeys.create_organization(name="Acme", email="a@acme.io", plan="pro", **plan)
        other = apikeys.create_organization(name="Other", email="o@other.io", plan="pro", **plan)
        created = [apikeys.create_key(acme, f"acme {n}").api_key for n in range(12)]
        for api_key in created[:4]:
            apikeys.revoke_key(api_key.id, reason="test")
        apikeys.rotate_key(created[5].id, overlap_hours=1)
        theirs = [apikeys.create_key(other, f"other {n}").api_key for n in range(6)]
        for api_key in created + theirs:
            # A refused stored key (revoked, expired, outside its networks) names its ids.
            apikeys.audit(
                "auth.refused",
                actor=None,
                organization_id=api_key.organization_id,
                api_key_id=api_key.id,
                key_prefix=api_key.key_prefix,
                key_hint="abcd",
                details={"code": "revoked_api_key"},
            )
        for api_key in created:
            # A guess with one of Acme's visible prefixes belongs to nobody.
            apikeys.audit("auth.refused", actor=None, key_prefix=api_key.key_prefix, key_hint="zz")
        for _ in range(5):
            apikeys.audit("auth.refused", actor=None, key_prefix="pk_live_zzzz", key_hint="zzzz")
        return {
            "acme": acme.id,
            "other": other.id,
            "key": created[6].id,
            "old_key": created[0].id,
        }


def period() -> tuple[date, date]:
    today = datetime.now(UTC).date()
    return today - timedelta(days=30), today + timedelta(days=1)


def test_the_audit_page_finds_the_organizations_records_and_attempts_on_its_keys(
    app: Flask, apikeys: APIKeys, tenants: dict[str, Any]
) -> None:
    start, end = period()
    with app.app_context():
        store = apikeys.service.store
        records, total = audit_page(store, tenants["acme"], AuditFilter(start, end), 1)
        attempts, attempts_total = audit_page(
            store, tenants["acme"], AuditFilter(start, end, "auth.refused"), 1
        )
        on_key, _ = audit_page(
            store, tenants["acme"], AuditFilter(start, end, None, tenants["key"]), 1
        )
    acme_prefixes = {record.key_prefix for record in records if record.event == "key.created"}
    # Its twelve stored keys' refusals; not the other's, not the guesses sharing its prefixes.
    assert attempts_total == 12
    assert {record.key_prefix for record in attempts} == acme_prefixes
    assert all(record.key_hint == "abcd" for record in attempts)
    assert all(record.organization_id == tenants["acme"] for record in records)
    assert total == len(records) and total > 12
    newest_first = sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)
    assert [record.id for record in records] == [record.id for record in newest_first]
    assert on_key and all(record.api_key_id == tenants["key"] for record in on_key)


def lists(apikeys: APIKeys, tenants: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """Every list and page of the admin API, the CLI and the dashboard, by name."""
    service = apikeys.service
    start, end = period()
    audit = {
        "audit page": AuditFilter(start, end),
        "audit page, one event": AuditFilter(start, end, "key.revoked"),
        "audit page, one key": AuditFilter(start, end, None, tenants["key"]),
    }
    return {
        "organizations, first page": lambda: service.organizations.list_organizations(limit=2),
        "organizations, a later page": lambda: service.organizations.list_organizations(
            limit=1, offset=1
        ),
        "keys, first page": lambda: service.keys.list_keys(tenants["acme"], limit=5),
        "keys, working only": lambda: service.keys.list_keys(
            tenants["acme"], include_revoked=False, limit=5
        ),
        "keys, a later page": lambda: service.keys.list_keys(tenants["acme"], limit=5, offset=5),
        "usage of the organization": lambda: service.reports.usage_stats(
            tenants["acme"], start=start, end=end
        ),
        "usage of a key": lambda: service.reports.usage_stats(
            tenants["acme"], start=start, end=end, key=tenants["key"]
        ),
        **{
            name: (
                lambda selection=selection: audit_page(service.store, tenants["acme"], selection, 1)
            )
            for name, selection in audit.items()
        },
    }


@pytest.mark.parametrize(
    "name",
    [
        "organizations, first page",
        "organizations, a later page",
        "keys, first page",
        "keys, working only",
        "keys, a later page",
        "usage of the organization",
        "usage of a key",
        "audit page",
        "audit page, one event",
        "audit page, one key",
    ],
)
def test_a_list_reads_no_big_table_whole_and_sorts_through_an_index(
    app: Flask, apikeys: APIKeys, tenants: dict[str, Any], name: str
) -> None:
    explained = plans(app, lists(apikeys, tenants)[name])
    assert explained, "the operation sent no statement"
    assert whole_table_reads(explained) == []


def test_the_audit_page_reads_no_other_organizations_attempts(
    app: Flask, apikeys: APIKeys, tenants: dict[str, Any]
) -> None:
    """The page reads the organization's records through their index, never every record
    (or every refused attempt) of the period."""
    start, end = period()
    explained = plans(
        app,
        lambda: audit_page(apikeys.service.store, tenants["acme"], AuditFilter(start, end), 1),
    )
    audit_lines = [line for _, lines in explained for line in lines if "api_key_audit_log" in line]
    assert audit_lines
    allowed = (
        "ix_api_key_audit_log_organization_id_created_at (organization_id=?",
        "INTEGER PRIMARY KEY (rowid=?)",
    )
    assert [line for line in audit_lines if not any(way in line for way in allowed)] == []


def test_every_foreign_key_has_an_index_that_starts_with_its_columns() -> None:
    """A row deleted from the referenced table (a key purged, an organization deleted) makes
    the database look up its referencing rows: without an index, through the whole table, once
    per deleted row (``api_keys.replaced_by_id``: 415 s for an organization of 10,000 keys)."""
    missing = []
    for table in metadata.tables.values():
        leading = [tuple(column.name for column in index.columns) for index in table.indexes] + [
            tuple(column.name for column in constraint.columns)
            for constraint in table.constraints
            if isinstance(constraint, sa.UniqueConstraint | sa.PrimaryKeyConstraint)
        ]
        for foreign_key in table.foreign_key_constraints:
            columns = tuple(column.name for column in foreign_key.columns)
            if not any(names[: len(columns)] == columns for names in leading):
                missing.append(f"{table.name}{columns}")
    assert missing == []


def test_purging_keys_finds_what_points_at_them_and_their_rows_through_indexes(
    app: Flask, apikeys: APIKeys, tenants: dict[str, Any]
) -> None:
    with app.app_context():
        engine = app.extensions["sqlalchemy"].engine
        with engine.begin() as connection:
            connection.execute(
                sa.insert(APIKeyUsage),
                [
                    {
                        "api_key_id": tenants["old_key"],
                        "organization_id": tenants["acme"],
                        "timestamp": datetime.now(UTC),
                        "endpoint": "/v1/a",
                        "method": "GET",
                        "status_code": 200,
                        "response_time_ms": 1.0,
                    }
                ]
                * 3,
            )
    tomorrow = datetime.now(UTC) + timedelta(seconds=1)
    explained = plans(
        app,
        lambda: apikeys.service.retention.purge_keys(
            revoked_before=tomorrow - timedelta(seconds=1)
        ),
    )
    writes = [
        (statement, lines)
        for statement, lines in explained
        if statement.lstrip().upper().startswith(("UPDATE", "DELETE"))
    ]
    assert len(writes) >= 3  # the usage rows, the links to the keys, the keys
    assert whole_table_reads(writes) == []


@pytest.mark.parametrize("left", ["nothing", "a backlog"])
def test_a_pruning_batch_reads_the_time_index_only(
    app: Flask, apikeys: APIKeys, tenants: dict[str, Any], left: str
) -> None:
    """Finding that nothing is old enough (the writer's pruning, every minute) must not read
    the table: in the order of the ids, it read all of it (0.4 s at a million rows)."""
    now = datetime.now(UTC)
    rows = [
        {
            "api_key_id": tenants["key"],
            "organization_id": tenants["acme"],
            "timestamp": now - timedelta(days=days),
            "endpoint": "/v1/a",
            "method": "GET",
            "status_code": 200,
            "response_time_ms": 1.0,
        }
        for days in range(10)
    ]
    with app.app_context():
        engine = app.extensions["sqlalchemy"].engine
        with engine.begin() as connection:
            connection.execute(sa.insert(APIKeyUsage), rows)
    before = now - timedelta(days=30 if left == "nothing" else 4)
    deleted: list[int] = []
    explained = plans(
        app,
        lambda: deleted.append(
            retention.delete_batch(
                engine.begin,
                retention.usage,
                retention.usage.c.timestamp < before,
                3,
                by=retention.usage.c.timestamp,
            )
        ),
    )
    assert deleted == [0 if left == "nothing" else 3]
    assert whole_table_reads(explained) == []
    assert any("ix_api_key_usage_timestamp" in line for _, lines in explained for line in lines)
    with engine.connect() as connection:
        kept = connection.execute(sa.select(sa.func.min(retention.usage.c.timestamp))).scalar()
    # The oldest went first: what is left is the newest.
    assert kept is not None and kept.replace(tzinfo=UTC) >= now - timedelta(
        days=9 if left == "nothing" else 6
    )


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=[pytest.mark.mariadb, pytest.mark.slow]),
    ],
)
def test_verifying_the_audit_chain_reads_it_with_a_server_side_cursor(
    make_app: Callable[..., Flask], request: pytest.FixtureRequest, backend: str
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    app = make_app(url)
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        for number in range(5):
            apikeys.audit("test.event", actor="tests", details={"n": number})
        engine = app.extensions["sqlalchemy"].engine
        cursors: list[str] = []

        def record(*arguments: Any) -> None:
            _, cursor, statement, _, _, _ = arguments
            if "FROM api_key_audit_log ORDER BY" in " ".join(statement.split()):
                cursors.append(type(cursor).__name__)

        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            assert apikeys.verify_audit() is None
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
    assert cursors in (["ServerCursor"], ["SSCursor"], ["SSDictCursor"])


def test_a_purge_holds_one_batch_of_keys_at_a_time_and_lists_them_all(
    app: Flask, apikeys: APIKeys, tenants: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge of 100,000 keys read every key's record at once (5 KB each, dry run or not):
    now a batch at a time, in the order of their creation, each batch deleted before the next
    is read. (Batches of 8 here, the same code as 200.)"""
    from flask_apikeys.models import APIKey
    from flask_apikeys.service import retention as service_retention

    monkeypatch.setattr(service_retention, "PURGE_BATCH", 8)
    batch = service_retention.PURGE_BATCH
    count = 2 * batch + 5
    now = datetime.now(UTC)
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        session.execute(
            sa.insert(APIKey),
            [
                {
                    "id": uuid.uuid4(),
                    "organization_id": tenants["other"],
                    "key_prefix": f"pk_live_{number:04d}",
                    "key_hash": f"hash-{number}",
                    "key_hint": "abcd",
                    "name": f"old {number}",
                    "environment": "live",
                    "is_active": False,
                    "created_at": now - timedelta(days=400, minutes=number % 7),
                    "revoked_at": now - timedelta(days=300),
                    "scopes": [],
                    "roles": [],
                    "allowed_networks": [],
                    "key_metadata": {},
                    "total_requests": 0,
                }
                for number in range(count)
            ],
        )
        session.commit()
        alive: weakref.WeakSet[APIKey] = weakref.WeakSet()
        held: list[int] = []

        def loaded(instance: APIKey, context: Any) -> None:
            alive.add(instance)

        def count_held(*arguments: Any) -> None:
            held.append(len(alive))  # the key records still in memory at each statement

        engine = app.extensions["sqlalchemy"].engine
        sa.event.listen(APIKey, "load", loaded)
        sa.event.listen(engine, "before_cursor_execute", count_held)
        try:
            listed = apikeys.service.retention.purge_keys(
                revoked_before=now - timedelta(days=200), dry_run=True
            )
            purged = apikeys.service.retention.purge_keys(revoked_before=now - timedelta(days=200))
        finally:
            sa.event.remove(engine, "before_cursor_execute", count_held)
            sa.event.remove(APIKey, "load", loaded)
        left = session.scalar(sa.select(sa.func.count()).where(APIKey.name.like("old %")))
    assert len(listed) == count and [key["id"] for key in purged] == [key["id"] for key in listed]
    assert len({key["id"] for key in listed}) == count
    assert left == 0
    assert max(held) <= batch + 2  # one batch (and a fixture's key or two)
