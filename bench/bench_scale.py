#!/usr/bin/env python
"""Every admin, CLI and dashboard read (and the big writes) at a million rows, as query plans.

    python bench/bench_scale.py seed --database-url URL [--usage-rows 1000000
        --organizations 10000 --keys 100000 --big-organization-keys 10000 --audit-rows 1000000]
    python bench/bench_scale.py explain --database-url URL [--only NAME,…] [--analyze]

``seed`` builds the data: the busy organization's month of usage rows and its rollups by
``bench_usage_stats.py`` (the same generator and backfill), then ``--organizations`` more
organizations with ``--keys`` keys in all (one organization, ``big``, holds
``--big-organization-keys`` of them, a third revoked and some rotated), and ``--audit-rows``
audit records, a valid chain (a third of them refused attempts, which name no organization).

``explain`` runs each operation once through the real service (in an app context, on the same
database), records every statement it sends (a cursor listener), and prints each statement's
plan: ``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN`` on PostgreSQL (``EXPLAIN (ANALYZE,
BUFFERS)`` for reads with ``--analyze``). Lines that read a whole big table or sort without an
index are marked ``<<``. Writes run in a transaction that is rolled back, so the data stays.
Compare plans and row counts, not milliseconds: the machine is shared.
"""
# ruff: noqa: E501, S608  (the SQL is built from constants of this script, never input)

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from flask import Flask  # noqa: E402
from flask_sqlalchemy import SQLAlchemy  # noqa: E402

from bench import bench_usage_stats  # noqa: E402
from flask_apikeys import APIKeys  # noqa: E402
from flask_apikeys.audit import GENESIS, record_hash  # noqa: E402
from flask_apikeys.dashboard.audit_log import AuditFilter, audit_page  # noqa: E402
from flask_apikeys.errors import APIKeyError  # noqa: E402
from flask_apikeys.models import APIKey, metadata  # noqa: E402
from flask_apikeys.usage import backfill, retention  # noqa: E402

BIG_TABLES = (
    "api_keys",
    "organizations",
    "api_key_usage",
    "api_key_audit_log",
    "api_key_usage_rollups",
)


def seed(url: str, args: argparse.Namespace) -> None:
    engine = sa.create_engine(url)
    backend = engine.dialect.name
    organization, keys = bench_usage_stats.setup_schema(engine)
    started = time.perf_counter()
    generate = (
        bench_usage_stats.generate_postgresql
        if backend == "postgresql"
        else bench_usage_stats.generate_sqlite
    )
    generate(engine, organization, keys, args.usage_rows)
    backfill.backfill_rollups(engine.begin)
    print(f"usage rows and rollups: {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    add_tenants(engine, args.organizations - 1, args.keys - len(keys), args.big_organization_keys)
    print(f"organizations and keys: {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    add_audit(engine, args.audit_rows)
    print(f"audit rows: {time.perf_counter() - started:.0f} s", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE" if backend == "postgresql" else "ANALYZE")
    engine.dispose()


def add_tenants(engine: sa.Engine, organizations: int, keys: int, big_keys: int) -> None:
    """``organizations`` more organizations (the first is ``big``) and ``keys`` keys: ``big``
    gets ``big_keys`` of them (every third revoked, every tenth rotated into the next), the
    others share the rest evenly; one key in five expires."""
    postgresql = engine.dialect.name == "postgresql"
    small = organizations - 1

    def identifier(salt: int, number: str) -> str:
        if postgresql:
            return f"(lpad(to_hex({salt}), 16, '0') || lpad(to_hex({number}), 16, '0'))::uuid"
        return f"printf('%016x%016x', {salt}, {number})"

    def moment(minutes: str) -> str:
        if postgresql:
            return f"(TIMESTAMP '2025-01-01' + ({minutes}) * INTERVAL '1 minute')"
        return f"(strftime('%Y-%m-%d %H:%M:%S', 1735689600 + ({minutes}) * 60, 'unixepoch') || '.000000')"

    true, false = ("true", "false") if postgresql else ("1", "0")
    padded = "lpad(i::text, 8, '0')" if postgresql else "substr('0000000' || i, -8, 8)"
    with engine.begin() as connection:

        def run(sql: str) -> None:
            connection.exec_driver_sql(sql.replace("%", "%%") if postgresql else sql)

        if postgresql:
            series = "generate_series(0, {last}) AS s(i) WHERE true"
        else:
            connection.exec_driver_sql("CREATE TEMP TABLE series(i INTEGER PRIMARY KEY)")
            connection.exec_driver_sql(
                f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {max(organizations, keys)}) INSERT INTO series SELECT i FROM n"
            )
            series = "series WHERE i <= {last}"
        run(f"""
            INSERT INTO organizations (id, name, slug, email, plan, is_active, created_at, updated_at)
            SELECT {identifier(1, "i")}, 'Tenant ' || i, CASE WHEN i = 0 THEN 'big' ELSE 'tenant-' || i END,
                'ops' || i || '@tenant.test', CASE i % 3 WHEN 0 THEN 'free' WHEN 1 THEN 'pro' ELSE 'enterprise' END,
                {true}, {moment("i")}, {moment("i")}
            FROM {series.format(last=organizations - 1)}
        """)
        organization_of = (
            f"(CASE WHEN i < {big_keys} THEN 0 ELSE 1 + (i - {big_keys}) % {small} END)"
        )
        revoked = f"i < {big_keys} AND i % 3 = 0"
        run(f"""
            INSERT INTO api_keys (id, organization_id, key_prefix, key_hash, key_hint, name,
                environment, is_active, created_at, revoked_at, revoked_by, scopes, roles,
                allowed_networks, total_requests, metadata, expires_at)
            SELECT {identifier(2, "i")}, {identifier(1, organization_of)},
                'pk_live_' || {padded}, 'hash-' || i, 'h' || (i % 1000),
                'key ' || i, 'live', CASE WHEN {revoked} THEN {false} ELSE {true} END,
                {moment("i")}, CASE WHEN {revoked} THEN {moment("i + 10")} END,
                CASE WHEN {revoked} THEN 'ops' END, '["bench:*"]', '[]', '[]', 0, '{{}}',
                CASE WHEN i % 5 = 1 THEN {moment("i + 400000")} END
            FROM {series.format(last=keys - 1)}
        """)
        # Every tenth key of the big organization was rotated into the next one.
        run(f"""
            UPDATE api_keys SET replaced_by_id = (SELECT n.id FROM api_keys n
                WHERE n.key_hash = 'hash-' || (CAST(substr(api_keys.key_hash, 6) AS INTEGER) + 1))
            WHERE key_hash IN (SELECT 'hash-' || i FROM {series.format(last=big_keys - 2)} AND i % 10 = 1)
        """)


def add_audit(engine: sa.Engine, rows: int, chunk: int = 20_000) -> None:
    """``rows`` audit records, a valid chain: key events of the organizations' keys and, one
    in three, refused attempts that name only a prefix (no organization)."""
    table = metadata.tables["api_key_audit_log"]
    with engine.connect() as connection:
        keys = connection.execute(
            sa.select(
                metadata.tables["api_keys"].c.id,
                metadata.tables["api_keys"].c.organization_id,
                metadata.tables["api_keys"].c.key_prefix,
            )
            .order_by(metadata.tables["api_keys"].c.key_prefix)
            .limit(20_000)
        ).all()
    previous = GENESIS
    start = datetime(2025, 1, 1, tzinfo=UTC)
    events = ("key.created", "key.updated", "key.revoked", "key.rotated")
    for first in range(0, rows, chunk):
        batch = []
        for index in range(first, min(rows, first + chunk)):
            key_id, organization_id, prefix = keys[index % len(keys)]
            refused = index % 3 == 0
            values: dict[str, Any] = {
                "created_at": start + timedelta(seconds=index * 30),
                "event": "auth.refused" if refused else events[index % 4],
                "actor": None if refused else "ops@tenant.test",
                "organization_id": None if refused else organization_id,
                "api_key_id": None if refused else key_id,
                "key_prefix": prefix,
                "key_hint": "abcd",
                "ip_address": "10.0.0.1",
                "user_agent": "bench/1.0",
                "details": {"code": "invalid_api_key"} if refused else {},
            }
            digest = record_hash(values, previous)
            batch.append({**values, "previous_hash": previous, "record_hash": digest})
            previous = digest
        with engine.begin() as connection:
            connection.execute(sa.insert(table), batch)


# -- explain ------------------------------------------------------------------------------------


def build_app(url: str) -> tuple[Flask, APIKeys]:
    app = Flask("scale")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        APIKEYS_HASH_SECRET="bench-secret-of-sufficient-length",
        APIKEYS_USAGE_FLUSH_INTERVAL=3600,  # flushed by the "flush" operation only
        APIKEYS_ADMIN_KEY="pk_live_" + "A" * 40,
    )
    apikeys = APIKeys(app, db=SQLAlchemy(app))
    return app, apikeys


@contextmanager
def recorded(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def listener(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if (
            not statement.lstrip()
            .upper()
            .startswith(
                ("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT", "SELECT 1", "PRAGMA")
            )
        ):
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)


def plan_lines(engine: sa.Engine, statement: str, parameters: Any, analyze: bool) -> list[str]:
    postgresql = engine.dialect.name == "postgresql"
    if postgresql:
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
    else:
        prefix = "EXPLAIN QUERY PLAN "
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if isinstance(parameters, list) and parameters and isinstance(parameters[0], (tuple, dict)):
            parameters = parameters[0]  # an executemany: the plan of one row
        try:
            cursor.execute(prefix + statement, parameters)
        except Exception as error:  # noqa: BLE001 - a plan that cannot be taken is reported
            raw.rollback()
            return [f"(no plan: {type(error).__name__}: {str(error).splitlines()[0]})"]
        rows = cursor.fetchall()
        raw.rollback()
    finally:
        raw.close()
    return [str(row[0] if postgresql else row[-1]) for row in rows]


def suspicious(line: str) -> bool:
    tables = "|".join(BIG_TABLES)
    return bool(
        re.search(rf"Seq Scan on ({tables})\b", line)
        or re.search(r"^\s*(->\s*)?Sort\b", line)
        or re.search(rf"\bSCAN ({tables})\b(?! USING (COVERING )?INDEX)", line)
        or "USE TEMP B-TREE" in line
    )


def operations(apikeys: APIKeys) -> dict[str, Callable[[], Any]]:
    service = apikeys.service
    big = service.organizations.get_organization("big")
    busy = service.organizations.get_organization("busy")
    small = service.organizations.get_organization("tenant-17")
    big_key = service.keys.list_keys(big, limit=1)[0][0]
    busy_key = service.keys.list_keys(busy, limit=1)[0][0]
    store = service.store
    engine = store.session.get_bind().engine
    small_key = service.keys.list_keys(small, include_revoked=False, limit=1)[0][0]
    small_revocable = service.keys.list_keys("tenant-18", include_revoked=False, limit=1)[0][0]
    cold_keys = list(
        store.session.execute(sa.select(APIKey.id, APIKey.organization_id).limit(2000))
    )
    month = (date(2026, 1, 1), date(2026, 2, 1))
    return {
        "org list, first page": lambda: service.organizations.list_organizations(limit=50),
        "org list, page 200": lambda: service.organizations.list_organizations(
            limit=50, offset=9_950
        ),
        "org show by slug": lambda: service.organizations.get_organization("tenant-42"),
        "org plan_excess (big)": lambda: service.organizations.plan_excess(big),
        "key list (big), first page": lambda: service.keys.list_keys(big, limit=50),
        "key list (big), active only": lambda: service.keys.list_keys(
            big, include_revoked=False, limit=50
        ),
        "key list (big), page 200": lambda: service.keys.list_keys(big, limit=50, offset=9_950),
        "key list (small)": lambda: service.keys.list_keys(small, limit=50),
        "key show": lambda: service.keys.get_key(big_key.id, organization=big),
        "authenticating key count (big)": lambda: service.organizations.authenticating_key_count(
            big
        ),
        "usage month (busy)": lambda: service.reports.monthly_usage(busy, "2026-01"),
        "usage month, one key": lambda: service.reports.usage_stats(
            busy, start=month[0], end=month[1], key=busy_key.id
        ),
        "usage ten years (busy)": lambda: service.reports.usage_stats(
            busy, start=date(2017, 1, 1), end=date(2026, 12, 1)
        ),
        "usage month (big, empty)": lambda: service.reports.monthly_usage(big, "2026-01"),
        "audit page (big), 30 days": lambda: audit_page(
            store, big.id, AuditFilter(date(2025, 1, 1), date(2026, 12, 31)), 1
        ),
        "audit page (big), event": lambda: audit_page(
            store, big.id, AuditFilter(date(2025, 1, 1), date(2026, 12, 31), "key.revoked"), 1
        ),
        "audit page (big), key": lambda: audit_page(
            store, big.id, AuditFilter(date(2025, 1, 1), date(2026, 12, 31), None, big_key.id), 1
        ),
        "audit page (big), page 100": lambda: audit_page(
            store, big.id, AuditFilter(date(2025, 1, 1), date(2026, 12, 31)), 100
        ),
        "audit page (small)": lambda: audit_page(
            store, small.id, AuditFilter(date(2025, 1, 1), date(2026, 12, 31)), 1
        ),
        # Writes: run for real (the data changes a little), their statements explained.
        "write: create key (big, over its plan)": lambda: refused(
            lambda: service.keys.create_key(big, "one more")
        ),
        "write: create key (small)": lambda: refused(
            lambda: service.keys.create_key(small, "one more")
        ),
        "write: rotate key (small)": lambda: refused(
            lambda: service.keys.rotate_key(small_key.id, overlap_hours=0)
        ),
        "write: revoke key (small)": lambda: refused(
            lambda: service.keys.revoke_key(small_revocable.id, reason="bench")
        ),
        "write: deactivate organization (big)": lambda: service.organizations.update_organization(
            big, is_active=False
        ),
        "write: prune usage, one batch": lambda: retention.prune_usage(
            engine.begin,
            raw_before=datetime(2026, 1, 2, tzinfo=UTC),
            rollups_before=datetime(2026, 1, 2, tzinfo=UTC),
            max_batches=1,
        ),
        "write: flush 2,000 rows of 2,000 keys": lambda: flush_rows(apikeys, cold_keys),
    }


def refused(operation: Callable[[], Any]) -> Any:
    """Run ``operation``; a refusal (a plan's limit) is a result too: its statements ran."""
    try:
        return operation()
    except APIKeyError as error:
        return error


def flush_rows(apikeys: APIKeys, keys: list[Any]) -> int:
    """One flush of one row per key: raw rows, key counters and rollups, as the writer does."""
    writer = apikeys.state.writer
    assert writer is not None
    now = time.time()
    for index, (key_id, organization_id) in enumerate(keys):
        writer.add_usage(
            (
                key_id,
                organization_id,
                now,
                "/v1/presentations",
                "GET",
                200 + index % 2,
                12.5,
                None,
                None,
                "10.0.0.1",
                "bench/1.0",
                None,
                None,
            )
        )
    return apikeys.flush_usage()


def writes() -> dict[str, str]:
    """Writes explained as statements (run only with ``--analyze``, and rolled back): the big
    deletes the service leaves to SQL."""
    return {
        "delete organization (big: 10k keys)": "DELETE FROM organizations WHERE slug = 'big'",
        "purge: keys revoked long ago": "UPDATE api_keys SET replaced_by_id = NULL WHERE replaced_by_id IN (SELECT id FROM api_keys WHERE revoked_at IS NOT NULL LIMIT 200)",
    }


def explain(url: str, args: argparse.Namespace) -> None:
    app, apikeys = build_app(url)
    only = set(args.only.split(",")) if args.only else None
    with app.app_context():
        engine = apikeys.service.store.session.get_bind().engine
        for name, operation in operations(apikeys).items():
            if only and not any(part in name for part in only):
                continue
            with recorded(engine) as statements:
                started = time.perf_counter()
                operation()
                elapsed = (time.perf_counter() - started) * 1000
            apikeys.service.store.session.rollback()
            print(f"\n=== {name}: {len(statements)} statements, {elapsed:.0f} ms (shared machine)")
            for statement, parameters in statements:
                print("  SQL: " + " ".join(statement.split())[:400])
                for line in plan_lines(engine, statement, parameters, args.analyze):
                    print(("  << " if suspicious(line) else "     ") + line)
        for name, statement in writes().items():
            if only and not any(part in name for part in only):
                continue
            print(f"\n=== {name} (explained{', run and rolled back' if args.analyze else ''})")
            for line in plan_lines(
                engine, statement, {} if engine.dialect.name == "postgresql" else (), args.analyze
            ):
                print(("  << " if suspicious(line) else "     ") + line)
        if not only or "verify" in only:
            started = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            result = apikeys.verify_audit()
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(
                f"\n=== verify_audit: {result}, {time.perf_counter() - started:.1f} s, peak RSS {before / 1024:.0f} → {after / 1024:.0f} MiB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=("seed", "explain"))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--usage-rows", type=int, default=1_000_000)
    parser.add_argument("--organizations", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--big-organization-keys", type=int, default=10_000)
    parser.add_argument("--audit-rows", type=int, default=1_000_000)
    parser.add_argument("--only", help="comma-separated parts of operation names")
    parser.add_argument("--analyze", action="store_true")
    args = parser.parse_args()
    if args.command == "seed":
        seed(args.database_url, args)
    else:
        explain(args.database_url, args)


if __name__ == "__main__":
    main()
