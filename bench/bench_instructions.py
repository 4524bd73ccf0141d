#!/usr/bin/env python
"""Instructions per request under callgrind: the same ratios as bench_inproc.py, without noise.

    python bench/bench_instructions.py [--n 1000 --mode wsgi,testclient]
        [--variants bare,sqlalchemy,auth,limits,protected,cold,limited,badkey]

On a shared 2-core VM wall-clock ratios move by ±20 % between runs; instruction counts do
not. Each variant runs in its own process under ``valgrind --tool=callgrind``, counting only
inside the measured loop (``--toggle-collect`` on the one ``functools.reduce`` call that runs
it), so start-up and warm-up are excluded. Needs valgrind (``apt-get install -y valgrind``);
about a minute per variant and mode, two at a time.

Modes (``--mode``, comma-separated; both by default): ``wsgi`` calls the app directly as a WSGI
callable, as a server does; ``testclient`` goes through Flask's test client, which adds about
500k instructions to every request and so hides half of what the extension costs.

Variants (as in bench_inproc.py; every request carries an Authorization header):
  bare        the route, no extension
  sqlalchemy  the route in an app with Flask-SQLAlchemy, no keys (what the app itself costs)
  auth        one hot key and @require_scopes; rate limits and usage tracking off
  limits      auth + rate limits (memory, sliding windows) and their X-RateLimit-* headers
  limits-fixed  the same with APIKEYS_RATELIMIT_STRATEGY = "fixed-window"
  protected   one hot key, everything on by default, buffered usage included: rows are held
              until one flush inside the measured loop, so the writer's work is counted too
  protected-fixed  the same with fixed windows
  metrics     protected + the Prometheus metrics (needs flask-apikeys[metrics]); their sync
              thread is held back and syncs once inside the measured loop, as the flush
  cold        protected, but 10,000 keys stored and every request sends another one: each
              request misses the key cache (most keys of a multi-tenant API are cold)
  limited     protected, with a key over its own rate limit: every request is refused with 429
  badkey      protected, with a well-formed key that is not stored: every request is refused
              with 401 (the failed-attempt limit set out of reach, so it stays a 401)

Callgrind runs Python ~50 times slower than real time, so a hot key's cache entry would expire
within the measured loop (TTL 1 s) and overstate the hot-key variants. The hot-key variants
therefore cache keys for an hour, and the extension's monotonic clock (where it has one) is
replaced by a virtual clock that advances ``VIRTUAL_STEP`` seconds per request: periodic work
(the revocation check) runs as often as it would at full speed.

Instructions are not time: a cache miss or a system call costs more than its instructions
say. They answer "how much work does the extension add", reproducibly.
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.callgrind import count_instructions  # noqa: E402 - after the path is set

#: Seconds of real time one request stands for on the virtual clock (a WSGI request's order).
VIRTUAL_STEP = 100e-6
#: Keys stored for ``cold``; each measured request sends a different one.
COLD_KEYS = 10_000
WARMUP = 300
HOT_KEY = {"APIKEYS_CACHE_TTL": 3600}
#: Hold every row until the flush inside the measured loop (callgrind counts one thread).
HELD_USAGE = {"APIKEYS_USAGE_FLUSH_INTERVAL": 3600, "APIKEYS_USAGE_BATCH_SIZE": 10**6}
FIXED = {"APIKEYS_RATELIMIT_STRATEGY": "fixed-window"}
CONFIG: dict[str, dict[str, Any]] = {
    "auth": {**HOT_KEY, "APIKEYS_RATELIMIT_ENABLED": False, "APIKEYS_USAGE_TRACKING": False},
    "limits": {**HOT_KEY, "APIKEYS_USAGE_TRACKING": False},
    "limits-fixed": {**HOT_KEY, "APIKEYS_USAGE_TRACKING": False, **FIXED},
    "protected": {**HOT_KEY, **HELD_USAGE},
    "protected-fixed": {**HOT_KEY, **HELD_USAGE, **FIXED},
    "metrics": {**HOT_KEY, **HELD_USAGE},
    "cold": {**HELD_USAGE},
    "limited": {**HOT_KEY, **HELD_USAGE},
    "badkey": {**HOT_KEY, **HELD_USAGE, "APIKEYS_FAILED_AUTH_LIMIT": "1000000000/minute"},
}
EXPECTED_STATUS = {"limited": 429, "badkey": 401}


class VirtualClock:
    """A monotonic clock the bench moves: ``VIRTUAL_STEP`` per request."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def prepare(variant: str, database_url: str, keys_file: str) -> None:
    """Outside valgrind: create the tables and the keys a variant sends, in ``keys_file``."""
    from bench.common import bench_keys, bulk_keys, protected_app
    from flask_apikeys.keys import generate_key

    if variant in ("bare", "sqlalchemy"):
        sent = ["pk_live_" + "x" * 46]  # ignored, but the same bytes on the wire
    else:
        app, apikeys = protected_app(f"bench_{variant}", database_url, **CONFIG[variant])
        sent = bench_keys(app, apikeys, fresh=True)
        if variant == "cold":
            sent = bulk_keys(app, apikeys, COLD_KEYS)
        elif variant == "limited":
            sent = bulk_keys(app, apikeys, 1, custom_rate_limit="1/day")
        elif variant == "badkey":
            sent = [generate_key("pk", "live")]
        with app.app_context():
            app.extensions["apikeys"].service.store.session.get_bind().dispose()
    Path(keys_file).write_text(json.dumps(sent))


def requester(app: Any, mode: str) -> Callable[[str], int]:
    """A function that sends ``GET /r`` with a key and returns the status."""
    if mode == "testclient":
        client = app.test_client()
        return lambda key: client.get("/r", headers={"Authorization": f"Bearer {key}"}).status_code
    from werkzeug.test import EnvironBuilder

    base = EnvironBuilder(path="/r", headers={"Authorization": "Bearer x"}).get_environ()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return statuses.append

    def call(key: str) -> int:
        environ = dict(base)
        environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
        environ["wsgi.input"] = io.BytesIO(b"")
        body = app(environ, start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()
        return int(statuses.pop()[:3])

    return call


def run_variant(variant: str, mode: str, n: int, database_url: str, keys_file: str) -> None:
    """The measured process: build the variant, warm it up, run ``n`` requests in one call."""
    from flask_sqlalchemy import SQLAlchemy

    from bench.common import bare_app, protected_app

    sent: list[str] = json.loads(Path(keys_file).read_text())
    flush = None
    sync_metrics = None
    clock = None
    if variant in ("bare", "sqlalchemy"):
        app = bare_app(f"bench_{variant}")
        if variant == "sqlalchemy":
            app.config["SQLALCHEMY_DATABASE_URI"] = database_url
            SQLAlchemy(app)
    else:
        app, _ = protected_app(f"bench_{variant}", database_url, **CONFIG[variant])
        if variant == "metrics":
            from flask_apikeys.metrics import APIKeysMetrics

            APIKeysMetrics(app, sync_interval=3600)
            # The figures a process keeps itself move into the metrics once, in the loop.
            sync_metrics = app.extensions["apikeys_metrics"].sync
        state = app.extensions["apikeys"]
        flush = state.writer.flush if state.writer is not None else None
        if hasattr(state.cache, "clock"):
            clock = VirtualClock(state.cache.clock())
            state.cache.clock = clock
    call = requester(app, mode)
    expected = EXPECTED_STATUS.get(variant, 200)
    # The cold variant warms up on keys it does not measure with.
    warmup_keys = sent[-WARMUP:] if variant == "cold" else sent
    if variant == "cold" and n + WARMUP > len(sent):
        raise SystemExit(f"cold: at most {len(sent) - WARMUP} requests")
    for index in range(WARMUP):
        status = call(warmup_keys[index % len(warmup_keys)])
        if clock is not None:
            clock.now += VIRTUAL_STEP
        if status != expected and not (variant == "limited" and index == 0):
            raise SystemExit(f"{variant}: a warm-up request answered {status}, not {expected}")
    if flush is not None:
        flush()
    gc.collect()
    gc.freeze()  # collections then skip the start-up heap, which is the same in every variant

    def step(count: int, index: int) -> int:
        call(sent[index % len(sent)])
        if clock is not None:
            clock.now += VIRTUAL_STEP
        if flush is not None and index == n - 1:
            flush()
        if sync_metrics is not None and index == n - 1:
            sync_metrics()
        return count + 1

    functools.reduce(step, range(n), 0)  # callgrind counts inside this call only


def measure(variant: str, mode: str, n: int) -> int:
    """Instructions counted for ``n`` requests of ``variant`` in ``mode``."""
    with tempfile.TemporaryDirectory() as scratch:
        database_url = f"sqlite:///{scratch}/bench.sqlite"
        keys_file = f"{scratch}/keys.json"
        prepare(variant, database_url, keys_file)
        arguments = ["--run", variant, "--mode", mode, "--n", str(n)]
        arguments += ["--database-url", database_url, "--keys-file", keys_file]
        counted, _ = count_instructions(__file__, arguments)
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="requests per variant")
    parser.add_argument(
        "--variants", default="bare,sqlalchemy,auth,limits,protected,cold,limited,badkey"
    )
    parser.add_argument("--mode", default="wsgi,testclient", help="wsgi, testclient or both")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # inside valgrind
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--keys-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_variant(args.run, args.mode, args.n, args.database_url, args.keys_file)
        return
    variants = args.variants.split(",")
    if "bare" not in variants:
        variants.insert(0, "bare")
    modes = args.mode.split(",")
    print(f"python {sys.version.split()[0]}, {args.n} requests per variant, callgrind Ir")
    counts: dict[tuple[str, str], int] = {}
    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        for mode in modes:
            print(f"mode {mode}", flush=True)
            print(f"  {'variant':<12}{'instructions/request':>22}{'ratio to bare':>16}")
            counted = pool.map(measure, variants, [mode] * len(variants), [args.n] * len(variants))
            for variant, count in zip(variants, counted, strict=True):  # in order, as they end
                counts[variant, mode] = count
                ratio = count / counts["bare", mode]
                print(f"  {variant:<12}{count / args.n:>22,.0f}{ratio:>16.3f}", flush=True)


if __name__ == "__main__":
    main()
