#!/usr/bin/env python
"""What a rate-limit check costs, per strategy and storage, and per request vs a bare route.

    python bench/bench_ratelimit.py [--redis-url redis://127.0.0.1:6379/0]
        [--postgresql-url postgresql+psycopg://…] [--n 5000 --repeats 7] [--checks-only]

Without ``--redis-url`` / ``--postgresql-url`` throwaway servers are started on 127.0.0.1
(and stopped after).

1. The check alone: ``RateLimits.enforce`` for an authenticated key, i.e. what our hook adds
   after authentication: resolve the key's limits (cached), take one unit from the monthly
   quota, the organization's limit and the key's limit (all-or-none), keep the result for the
   headers. Seed 001 asks for under 5 ms. Each storage with sliding windows (the default) and
   with ``-fixed`` windows: memory; Redis with ``-exact`` (``APIKEYS_RATELIMIT_LEASE_SECONDS =
   0``: one round trip per check) and with leases (a key this busy takes its units a lease at a
   time); the database (``APIKEYS_RATELIMIT_STORAGE_URI = "database"``) on SQLite and on
   PostgreSQL, ``-exact`` and leased. Printed as µs and as a ratio to ``memory-fixed``.
2. Whole requests through the Flask test client, paired per repeat against a bare route:
   protected with limits off, protected with limits on memory, on Redis (both ways).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import sqlalchemy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask, request  # noqa: E402

from bench.common import bare_app, bench_keys, protected_app, summary  # noqa: E402
from bench.servers import postgresql_server, redis_server  # noqa: E402
from flask_apikeys.auth import authenticate_request  # noqa: E402

#: The variants of part 1: storage, then ``-exact`` (no leases) and ``-fixed`` (fixed windows).
CHECKS = [
    f"{storage}{exact}{fixed}"
    for storage, exacts in [
        ("memory", [""]),
        ("redis", ["-exact", ""]),
        ("database-sqlite", ["-exact", ""]),
        ("database-postgresql", ["-exact", ""]),
    ]
    for exact in exacts
    for fixed in ("", "-fixed")
]


def build(
    variant: str, database_url: str, redis_url: str, postgresql_url: str
) -> tuple[Flask, dict[str, str]]:
    if variant == "bare":
        return bare_app(f"bench_{variant}"), {}
    storage = "memory://"
    if variant.startswith("redis"):
        storage = redis_url
    elif variant.startswith("database"):
        storage = "database"
        if variant.startswith("database-postgresql"):
            database_url = own_database(postgresql_url, variant)
    app, apikeys = protected_app(
        f"bench_{variant}",
        database_url,
        APIKEYS_RATELIMIT_ENABLED=variant != "limits-off",
        APIKEYS_RATELIMIT_STORAGE_URI=storage,
        APIKEYS_RATELIMIT_LEASE_SECONDS=0 if "-exact" in variant else 0.1,
        APIKEYS_RATELIMIT_STRATEGY="fixed-window"
        if variant.endswith("-fixed")
        else "sliding-window",
    )
    return app, {"Authorization": "Bearer " + bench_keys(app, apikeys)[0]}


def own_database(server_url: str, variant: str) -> str:
    """A new, empty database on the PostgreSQL server for one variant."""
    name = "bench_" + variant.replace("-", "_")
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def bench_check(app: Flask, headers: dict[str, str], n: int, repeats: int) -> list[float]:
    """µs per ``RateLimits.enforce`` call, one sample per repeat."""
    limits = app.extensions["apikeys"].limits
    samples = []
    with app.test_request_context("/r", headers=headers):
        key = authenticate_request()
        assert key is not None
        current = request._get_current_object()  # type: ignore[attr-defined]
        enforce = limits.enforce
        for _ in range(200):
            enforce(key, current)
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(n):
                enforce(key, current)
            samples.append((time.perf_counter() - started) / n * 1e6)
    return samples


def bench_requests(
    callers: dict[str, Callable[[], int]], n: int, repeats: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {variant: [] for variant in callers}
    variants = list(callers)
    for repeat in range(repeats):
        for variant in variants[repeat % len(variants) :] + variants[: repeat % len(variants)]:
            call = callers[variant]
            started = time.perf_counter()
            for _ in range(n):
                call()
            samples[variant].append((time.perf_counter() - started) / n * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--postgresql-url")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checks-only", action="store_true", help="part 1 only")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="apikeys-bench-")
    with (
        redis_server(args.redis_url) as redis_url,
        postgresql_server(args.postgresql_url) as postgresql_url,
    ):
        apps = {
            variant: build(
                variant, f"sqlite:///{workdir}/{variant}.sqlite", redis_url, postgresql_url
            )
            for variant in ("bare", "limits-off", *CHECKS)
        }
        print(f"python={sys.version.split()[0]} n={args.n} repeats={args.repeats}")
        print(
            "\n1. One rate-limit check (quota + organization + key), µs: median (min-max), "
            "and the median's ratio to memory-fixed"
        )
        checks = {}
        for variant in CHECKS:
            # A round trip per check is slow: fewer of them, the same number of repeats.
            n = args.n // 10 if variant.endswith(("-exact", "-exact-fixed")) else args.n
            checks[variant] = bench_check(*apps[variant], n, args.repeats)
        base = statistics.median(checks["memory-fixed"])
        for variant, micros in checks.items():
            ratio = statistics.median(micros) / base
            print(f"   {variant:<30}{summary(micros):>22}   x{ratio:.2f}")
        if args.checks_only:
            for app, _ in apps.values():
                state = app.extensions.get("apikeys")
                if state is not None:
                    state.extension.close(app)
            return

        callers = {}
        for variant, (app, headers) in apps.items():
            if variant not in ("bare", "limits-off", "memory", "redis-exact", "redis"):
                continue
            client = app.test_client()

            def call(client: object = client, headers: dict[str, str] = headers) -> int:
                return client.get("/r", headers=headers).status_code  # type: ignore[attr-defined]

            for _ in range(300):
                status = call()
            if status != 200:
                raise SystemExit(f"{variant}: warm-up request answered {status}")
            callers[variant] = call
        samples = bench_requests(callers, args.n, args.repeats)
        print("\n2. Test-client request, µs and ratio to the bare route: median (min-max)")
        for variant, micros in samples.items():
            ratios = [value / bare for value, bare in zip(micros, samples["bare"], strict=True)]
            print(
                f"   {variant:<11}{summary(micros):>22}   x{statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )
        for app, _ in apps.values():  # write the queued usage rows while the files exist
            state = app.extensions.get("apikeys")
            if state is not None:
                state.extension.close(app)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
