#!/usr/bin/env python
"""What a rate-limit check costs: per check (memory and Redis), and per request vs a bare route.

    python bench/bench_ratelimit.py [--redis-url redis://127.0.0.1:6379/0] [--n 5000 --repeats 7]

Without ``--redis-url`` a throwaway redis-server is started on 127.0.0.1 (and stopped after).

1. The check alone: ``RateLimits.enforce`` for an authenticated key, i.e. what our hook adds
   after authentication: resolve the key's limits (cached), take one unit from the monthly
   quota, the organization's limit and the key's limit (all-or-none), keep the result for the
   headers. Seed 001 asks for under 5 ms. On Redis twice: ``redis-exact`` with
   ``APIKEYS_RATELIMIT_LEASE_SECONDS = 0`` (one round trip per check) and ``redis`` as by
   default (a key this busy takes its units a lease at a time).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask, request  # noqa: E402

from bench.common import bare_app, bench_keys, protected_app, summary  # noqa: E402
from bench.servers import redis_server  # noqa: E402
from flask_apikeys.auth import authenticate_request  # noqa: E402


def build(variant: str, database_url: str, redis_url: str) -> tuple[Flask, dict[str, str]]:
    if variant == "bare":
        return bare_app(f"bench_{variant}"), {}
    app, apikeys = protected_app(
        f"bench_{variant}",
        database_url,
        APIKEYS_RATELIMIT_ENABLED=variant != "limits-off",
        APIKEYS_RATELIMIT_STORAGE_URI=redis_url if variant.startswith("redis") else "memory://",
        APIKEYS_RATELIMIT_LEASE_SECONDS=0 if variant == "redis-exact" else 0.1,
    )
    return app, {"Authorization": "Bearer " + bench_keys(app, apikeys)[0]}


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
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="apikeys-bench-")
    with redis_server(args.redis_url) as redis_url:
        apps = {
            variant: build(variant, f"sqlite:///{workdir}/{variant}.sqlite", redis_url)
            for variant in ("bare", "limits-off", "memory", "redis-exact", "redis")
        }
        print(f"python={sys.version.split()[0]} n={args.n} repeats={args.repeats}")
        print("\n1. One rate-limit check (quota + organization + key), µs: median (min-max)")
        for variant in ("memory", "redis-exact", "redis"):
            print(
                f"   {variant:<12}{summary(bench_check(*apps[variant], args.n, args.repeats)):>22}"
            )

        callers = {}
        for variant, (app, headers) in apps.items():
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
