#!/usr/bin/env python
"""Uncached key validation: the hash and the indexed lookup a cache miss costs, p50 and p99.

    python bench/bench_validation.py [--keys 1000 --n 2000 --repeats 5]
        [--backends sqlite,postgresql] [--database-url postgresql+psycopg://…]

With the key cache off (``APIKEYS_CACHE_TTL = 0``), among ``--keys`` stored keys, times each
call of:
  hash        ``KeyHasher.lookup_candidates``: the HMAC-SHA256 digest(s) a key is looked up by
  verify      ``verify_key`` of a stored key: format and checksum, hash, one indexed SELECT
              joined to the organization, constant-time comparison, state checks, snapshot
  unknown     ``verify_key`` of a well-formed key that is not stored (refused after the lookup)
  request     a whole test-client request to a protected route with a stored key, uncached
              (rate limits and usage tracking on, as by default)
Keys are taken in a shuffled order. Each repeat gives a p50 and a p99 per step; the table shows
their median and min-max over repeats. Without ``--database-url`` the PostgreSQL backend runs
on a throwaway server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402

from bench.common import bench_keys, protected_app, summary  # noqa: E402
from bench.servers import postgresql_server  # noqa: E402
from flask_apikeys.errors import InvalidAPIKey  # noqa: E402
from flask_apikeys.keys import generate_key  # noqa: E402


def build(database_url: str, count: int) -> tuple[Flask, list[str]]:
    app, apikeys = protected_app("bench_validation", database_url, APIKEYS_CACHE_TTL=0)
    return app, bench_keys(app, apikeys, count, fresh=True)


def percentiles(samples: list[int]) -> tuple[float, float]:
    """p50 and p99 of nanosecond samples, in microseconds."""
    ordered = sorted(samples)
    return (
        ordered[len(ordered) // 2] / 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000,
    )


def timed(step: Callable[[str], Any], keys: list[str], n: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for index in range(n):
        key = keys[index % len(keys)]
        started = clock()
        try:
            step(key)
        except InvalidAPIKey:
            pass
        samples.append(clock() - started)
    return samples


def measure(label: str, database_url: str, args: argparse.Namespace) -> None:
    app, keys = build(database_url, args.keys)
    state = app.extensions["apikeys"]
    hasher, service = state.hasher, state.service
    unknown = [generate_key("pk", "live") for _ in range(args.keys)]
    client = app.test_client()

    def request(key: str) -> None:
        response = client.get("/r", headers={"Authorization": f"Bearer {key}"})
        if response.status_code != 200:
            raise SystemExit(f"request answered {response.status_code}")

    steps: dict[str, tuple[Callable[[str], Any], list[str]]] = {
        "hash": (hasher.lookup_candidates, keys),
        "verify": (service.verification.verify_key, keys),
        "unknown": (service.verification.verify_key, unknown),
        "request": (request, keys),
    }
    results: dict[str, list[tuple[float, float]]] = {step: [] for step in steps}
    with app.app_context():
        for _ in range(args.repeats):
            for step, (call, pool) in steps.items():
                shuffled = random.sample(pool, len(pool))
                timed(call, shuffled, min(200, args.n))  # warm-up
                results[step].append(percentiles(timed(call, shuffled, args.n)))
                state.db.session.remove()
        state.writer.close()  # write the requests' usage rows now, while the database is up
        state.db.engine.dispose()
    print(f"\n{label}: {args.keys} keys stored, key cache off, {args.n} calls per repeat")
    print(f"  {'step':<10}{'p50 µs median (min-max)':>28}{'p99 µs median (min-max)':>28}")
    for step, runs in results.items():
        p50s = [p50 for p50, _ in runs]
        p99s = [p99 for _, p99 in runs]
        print(f"  {step:<10}{summary(p50s):>28}{summary(p99s):>28}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1000, help="keys stored")
    parser.add_argument("--n", type=int, default=2000, help="calls per step and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--database-url", help="PostgreSQL URL (else a throwaway server)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; p50 and p99 per repeat, median (min-max) of them")
    workdir = tempfile.mkdtemp(prefix="apikeys-validation-")
    if "sqlite" in args.backends.split(","):
        measure("SQLite", f"sqlite:///{workdir}/bench.sqlite", args)
    if "postgresql" in args.backends.split(","):
        with ExitStack() as servers:
            measure(
                "PostgreSQL 15", servers.enter_context(postgresql_server(args.database_url)), args
            )


if __name__ == "__main__":
    main()
