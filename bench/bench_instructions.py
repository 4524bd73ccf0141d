#!/usr/bin/env python
"""Instructions per request under callgrind: the same ratios as bench_inproc.py, without noise.

    python bench/bench_instructions.py [--n 1000 --variants bare,sqlalchemy,auth,limits,protected]

On a shared 2-core VM wall-clock ratios move by ±20 % between runs; instruction counts do
not. Each variant runs in its own process under ``valgrind --tool=callgrind``, counting only
inside the measured loop (``--toggle-collect`` on the one ``functools.reduce`` call that runs
it), so start-up and warm-up are excluded. Needs valgrind (``apt-get install -y valgrind``);
about a minute per variant, two at a time.

Variants (as in bench_inproc.py; every request carries the same Authorization header):
  bare        the route, no extension
  sqlalchemy  the route in an app with Flask-SQLAlchemy, no keys (what the app itself costs)
  auth        a cached key and @require_scopes; rate limits and usage tracking off
  limits      auth + rate limits (memory) and their X-RateLimit-* headers
  protected   everything on by default, buffered usage included: rows are held until one
              flush inside the measured loop, so the writer's work is counted too
  flush       only the flush of protected's n rows (the requests themselves not counted)
  metrics     protected + the Prometheus metrics (needs flask-apikeys[metrics])

Instructions are not time: a cache miss or a system call costs more than its instructions
say. They answer "how much work does the extension add", reproducibly.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = {
    "auth": {"APIKEYS_RATELIMIT_ENABLED": False, "APIKEYS_USAGE_TRACKING": False},
    "limits": {"APIKEYS_USAGE_TRACKING": False},
    # Hold every row until the flush inside the measured loop (callgrind counts one thread).
    "protected": {"APIKEYS_USAGE_FLUSH_INTERVAL": 3600, "APIKEYS_USAGE_BATCH_SIZE": 10**6},
    # protected's requests made outside the count: only the writer's flush of their rows counted
    "flush": {"APIKEYS_USAGE_FLUSH_INTERVAL": 3600, "APIKEYS_USAGE_BATCH_SIZE": 10**6},
    # protected + the Prometheus metrics (flask_apikeys.metrics) subscribed to the signals
    "metrics": {"APIKEYS_USAGE_FLUSH_INTERVAL": 3600, "APIKEYS_USAGE_BATCH_SIZE": 10**6},
}


def run_variant(variant: str, n: int) -> None:
    """The measured process: build the variant, warm it up, run ``n`` requests in one call."""
    from flask_sqlalchemy import SQLAlchemy

    from bench.common import bare_app, bench_keys, protected_app

    workdir = tempfile.mkdtemp(prefix="apikeys-instructions-")
    database_url = f"sqlite:///{workdir}/bench.sqlite"
    flush = None
    if variant in ("bare", "sqlalchemy"):
        app = bare_app(f"bench_{variant}")
        if variant == "sqlalchemy":
            app.config["SQLALCHEMY_DATABASE_URI"] = database_url
            SQLAlchemy(app)
        key = "pk_live_" + "x" * 46  # ignored, but the same bytes on the wire
    else:
        app, apikeys = protected_app(f"bench_{variant}", database_url, **CONFIG[variant])
        if variant == "metrics":
            from flask_apikeys.metrics import APIKeysMetrics

            APIKeysMetrics(app)
        key = bench_keys(app, apikeys)[0]
        writer = app.extensions["apikeys"].writer
        flush = writer.flush if writer is not None else None
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(300):
        if client.get("/r", headers=headers).status_code != 200:
            raise SystemExit(f"{variant}: the warm-up request was refused")
    if flush is not None:
        flush()
    gc.collect()
    gc.freeze()  # collections then skip the start-up heap, which is the same in every variant

    if variant == "flush":  # the requests uncounted, their rows' flush counted (per row)
        for _ in range(n):
            client.get("/r", headers=headers)
        functools.reduce(lambda count, _: count + (flush() if flush else 0), range(1), 0)
        return

    def step(count: int, index: int) -> int:
        client.get("/r", headers=headers)
        if flush is not None and index == n - 1:
            flush()
        return count + 1

    functools.reduce(step, range(n), 0)  # callgrind counts inside this call only


def measure(variant: str, n: int) -> int:
    """Instructions counted for ``n`` requests of ``variant``."""
    with tempfile.TemporaryDirectory() as scratch:
        completed = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                "--toggle-collect=functools_reduce",
                f"--callgrind-out-file={scratch}/callgrind.out",
                sys.executable,
                __file__,
                "--run",
                variant,
                "--n",
                str(n),
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if completed.returncode != 0 or found is None:
        raise SystemExit(f"{variant} failed:\n{completed.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="requests per variant")
    parser.add_argument("--variants", default="bare,sqlalchemy,auth,limits,protected")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # inside valgrind
    args = parser.parse_args()
    if args.run:
        run_variant(args.run, args.n)
        return
    variants = args.variants.split(",")
    if "bare" not in variants:
        variants.insert(0, "bare")
    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        counted = pool.map(lambda variant: measure(variant, args.n), variants)
        counts = dict(zip(variants, counted, strict=True))
    print(f"python {sys.version.split()[0]}, {args.n} requests per variant, callgrind Ir")
    print(f"  {'variant':<12}{'instructions/request':>22}{'ratio to bare':>16}")
    for variant, count in counts.items():
        per_request = count / args.n
        ratio = count / counts["bare"]
        print(f"  {variant:<12}{per_request:>22,.0f}{ratio:>16.3f}")


if __name__ == "__main__":
    main()
