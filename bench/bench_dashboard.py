#!/usr/bin/env python
"""How long the dashboard's usage page takes for an organization with a month of 1M usage rows.

    python bench/bench_dashboard.py [--rows 1000000 --days 30 --repeats 5 --database FILE]

Builds the rows in SQLite with one ``INSERT … SELECT`` over a recursive counter (seconds, not
minutes), spread over the last ``--days`` days, on a few keys, endpoints and status codes,
then signs in to the dashboard with the test client and times ``GET /dashboard/usage`` (the
default period, which covers every row), the same page for one key, and the admin API's usage
route for the same period, which reads through the same service function. Prints the minimum
and median of ``--repeats`` runs in wall-clock and CPU seconds (SQLite runs in this process,
so its CPU time is the work itself, less disturbed by other load on the machine).

The page reads statistics only through
:meth:`~flask_apikeys.service.reports.UsageReports.usage_stats`, which reads the rollup tables:
the rows are added to them with the backfill after the insert.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402
from flask_sqlalchemy import SQLAlchemy  # noqa: E402

from bench.common import HASH_SECRET  # noqa: E402
from flask_apikeys import APIKeys  # noqa: E402
from flask_apikeys.usage import backfill  # noqa: E402

PREFIX = "/dashboard"
ADMIN_KEY = "bench-bootstrap-admin-key-" + "x" * 16


#: ``rows`` usage rows in one statement: a recursive counter, spread evenly over the period,
#: over four keys, three endpoints and a few status codes (SQLite; uuids stored as hex).
INSERT_ROWS = sa.text(
    """
    WITH RECURSIVE counter(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM counter WHERE n < :last)
    INSERT INTO api_key_usage (api_key_id, organization_id, timestamp, endpoint, method,
        status_code, response_time_ms, tokens_used, cost_usd)
    SELECT CASE n % 4 WHEN 0 THEN :key0 WHEN 1 THEN :key1 WHEN 2 THEN :key2 ELSE :key3 END,
        :organization,
        strftime('%Y-%m-%d %H:%M:%f', :start, '+' || (n * :seconds / :rows) || ' seconds'),
        CASE n % 5 WHEN 0 THEN '/v1/generate/outline' WHEN 1 THEN '/v1/items/<id>'
             ELSE '/v1/presentations' END,
        CASE n % 5 WHEN 0 THEN 'POST' ELSE 'GET' END,
        CASE WHEN n % 97 = 0 THEN 500 WHEN n % 13 = 0 THEN 429 WHEN n % 7 = 0 THEN 403
             ELSE 200 END,
        (n * 7919 % 1000) / 10.0,
        CASE n % 5 WHEN 0 THEN n % 800 ELSE 0 END,
        CASE n % 5 WHEN 0 THEN 0.002 ELSE 0.0001 END
    FROM counter
    """
)


def build_app(database_url: str) -> tuple[Flask, APIKeys]:
    app = Flask("bench_dashboard")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        APIKEYS_HASH_SECRET=HASH_SECRET,
        APIKEYS_DASHBOARD_URL_PREFIX=PREFIX,
        APIKEYS_ADMIN_KEY=ADMIN_KEY,
        APIKEYS_ADMIN_RATE_LIMIT="",
    )
    return app, APIKeys(app, db=SQLAlchemy(app))


def fill(app: Flask, apikeys: APIKeys, rows: int, days: int) -> tuple[str, str, str]:
    """The organization, its admin key and ``rows`` usage rows; returns (org id, admin key,
    one key id)."""
    with app.app_context():
        apikeys.create_all()
        organization = apikeys.create_organization("Bench", "b@bench.io", "enterprise")
        admin = apikeys.create_key(organization, "admin", scopes=["admin", "*"])
        keys = [admin.api_key.id] + [
            apikeys.create_key(organization, f"key {n}").api_key.id for n in range(3)
        ]
        engine = apikeys.state.db.engine
        start = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)
        seconds = days * 86_400
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.execute(
                INSERT_ROWS,
                {
                    "last": rows - 1,
                    "rows": rows,
                    "seconds": seconds,
                    "organization": organization.id.hex,
                    "start": start.isoformat(sep=" "),
                    **{f"key{n}": key.hex for n, key in enumerate(keys)},
                },
            )
        print(f"inserted {rows:,} usage rows in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        # The statistics read rollups, not raw rows. No writer runs yet: the current hour too.
        backfill.backfill_rollups(engine.begin, until=datetime.now(UTC) + timedelta(hours=1))
        print(f"backfilled their rollups in {time.perf_counter() - started:.1f} s")
        return str(organization.id), admin.key, str(keys[1])


def timed(call: Callable[[], int], repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (this process: SQLite runs in it) of each run."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        status = call()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        assert status == 200, status
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database", help="a SQLite file to use (default: a temporary one)")
    arguments = parser.parse_args()
    directory = tempfile.TemporaryDirectory()
    path = Path(arguments.database or Path(directory.name) / "bench.sqlite")
    app, apikeys = build_app(f"sqlite:///{path}")
    organization_id, admin_key, key_id = fill(app, apikeys, arguments.rows, arguments.days - 1)
    client = app.test_client()
    page = client.get(PREFIX + "/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]  # type: ignore[index]
    signed_in = client.post(PREFIX + "/sign-in", data={"csrf_token": token, "key": admin_key})
    assert signed_in.status_code == 303, signed_in.text
    today = datetime.now(UTC).date()
    start = (today - timedelta(days=arguments.days - 1)).isoformat()
    end = (today + timedelta(days=1)).isoformat()
    cases: dict[str, Callable[[], int]] = {
        "dashboard usage page (all keys)": lambda: client.get(PREFIX + "/usage").status_code,
        "dashboard usage page (one key)": lambda: (
            client.get(f"{PREFIX}/usage?key={key_id}").status_code
        ),
        "admin API usage, same period": lambda: (
            client.get(
                f"/admin/organizations/{organization_id}/usage?start={start}&end={end}",
                headers={"X-API-Key": ADMIN_KEY},
            ).status_code
        ),
    }
    with app.app_context():
        total = apikeys.state.db.session.scalar(sa.text("SELECT count(*) FROM api_key_usage"))
    reported = client.get(
        f"/admin/organizations/{organization_id}/usage?start={start}&end={end}",
        headers={"X-API-Key": ADMIN_KEY},
    ).json["total_requests"]
    page_text = client.get(PREFIX + "/usage").text
    # The statistics must count every row (a few more: the bench's own requests are recorded).
    assert total <= reported <= total + 10, (total, reported)
    assert f"{total // 1000:,}," in page_text, "the page does not show the rows' total"
    print(f"{total:,} rows, {arguments.repeats} runs each, seconds (min / median):")
    print(f"  {'':34} {'wall clock':>17}   {'CPU':>17}")
    for name, call in cases.items():
        wall, cpu = timed(call, arguments.repeats)
        print(
            f"  {name:34} {min(wall):7.3f} / {statistics.median(wall):7.3f}"
            f"   {min(cpu):7.3f} / {statistics.median(cpu):7.3f}"
        )
    apikeys.close(app)
    directory.cleanup()


if __name__ == "__main__":
    main()
