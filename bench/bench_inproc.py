#!/usr/bin/env python
"""Per-request cost in process: a bare Flask route vs the same route behind flask-apikeys.

    python bench/bench_inproc.py [--n 1000 --repeats 15 --mode testclient|wsgi --clock wall|cpu]
        [--variants bare,sqlalchemy,headers,disabled,auth,limits,protected] [--bare-without-key]

Each repeat runs every variant for ``--n`` requests, in rotated order, and ratios are paired
within a repeat (variant / bare of the same repeat); the table shows the median and min-max over
repeats. Short windows and many repeats keep a pair close in time, which matters on a machine
that other work shares. Every variant receives the same request, ``Authorization`` header
included (``--bare-without-key``: the bare route gets none, as before 0.1's performance work).
A window of a variant that tracks usage ends by writing the rows it queued (``flush_usage``),
so the background writer's cost is charged to the variant that caused it and to no other.

Variants (``--variants``, comma-separated):
  bare        the route, no extension
  sqlalchemy  the route in an app with Flask-SQLAlchemy (what the extension needs) but no keys
  headers     the bare route plus five constant headers as long as all the rate-limit ones
              (what Werkzeug and the test client charge for headers alone, computing nothing)
  disabled    the extension installed with APIKEYS_ENABLED = False
  auth        a valid cached key and @require_scopes; rate limits and usage tracking off
  limits      auth + rate limits (memory storage) and their response headers; usage off
  protected   everything on, as by default: auth, scopes, rate limits with X-RateLimit-*
              headers, buffered usage tracking
  all-headers protected with APIKEYS_RATELIMIT_HEADERS = "all" (the IETF draft's fields too)

``--clock cpu`` measures the process's CPU time (all threads, so the usage writer's too) instead
of wall time: less sensitive to other work on the machine, and still charges every thread.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask, Response  # noqa: E402
from flask_sqlalchemy import SQLAlchemy  # noqa: E402

from bench.common import bare_app, bench_keys, protected_app, summary  # noqa: E402
from flask_apikeys.keys import generate_key  # noqa: E402

CONFIG = {
    "disabled": {"APIKEYS_ENABLED": False},
    "auth": {"APIKEYS_RATELIMIT_ENABLED": False, "APIKEYS_USAGE_TRACKING": False},
    "limits": {"APIKEYS_USAGE_TRACKING": False},
    "protected": {},
    "all-headers": {"APIKEYS_RATELIMIT_HEADERS": "all"},
}


def build(variant: str, database_url: str) -> tuple[Flask, dict[str, str]]:
    """The variant's app and the headers its requests carry."""
    if variant not in ("bare", "sqlalchemy", "headers"):
        app, apikeys = protected_app(f"bench_{variant}", database_url, **CONFIG[variant])
        return app, {"Authorization": "Bearer " + bench_keys(app, apikeys)[0]}
    app = bare_app(f"bench_{variant}")
    if variant == "sqlalchemy":
        app.config["SQLALCHEMY_DATABASE_URI"] = database_url
        SQLAlchemy(app)
    if variant == "headers":
        app.after_request(add_constant_headers)
    return app, {}


def add_constant_headers(response: Response) -> Response:
    add = response.headers.add
    add("X-RateLimit-Limit", "1000000000")
    add("X-RateLimit-Remaining", "999999999")
    add("X-RateLimit-Reset", "1796083201")
    add(
        "RateLimit-Policy",
        '"quota";q=1000000000;w=2592000, "organization";q=1000000000;w=60, '
        '"apikey";q=1000000000;w=60',
    )
    add(
        "RateLimit",
        '"quota";r=999999999;t=470069, "organization";r=999999999;t=60, "apikey";r=999999999;t=60',
    )
    return response


def caller(app: Flask, headers: dict[str, str], mode: str) -> Callable[[], int]:
    if mode == "testclient":
        client = app.test_client()
        return lambda: client.get("/r", headers=headers).status_code
    from werkzeug.test import EnvironBuilder

    base = EnvironBuilder(path="/r", headers=headers).get_environ()

    def call() -> int:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(b"")
        status: list[str] = []

        def start_response(value: str, response_headers: Any, exc_info: Any = None) -> Any:
            status.append(value)
            return lambda data: None

        body = app(environ, start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()
        return int(status[0][:3])

    return call


def flusher(app: Flask) -> Callable[[], object]:
    """What ends a timed window: writing the usage rows the window queued, if any."""
    state = app.extensions.get("apikeys")
    if state is None or state.writer is None:
        return lambda: None
    return state.writer.flush  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="requests per timed window")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--mode", choices=["testclient", "wsgi"], default="testclient")
    parser.add_argument(
        "--variants", default="bare,sqlalchemy,headers,disabled,auth,limits,protected"
    )
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--bare-without-key", action="store_true")
    args = parser.parse_args()
    variants = args.variants.split(",")
    workdir = tempfile.mkdtemp(prefix="apikeys-bench-")
    apps = {
        variant: build(variant, f"sqlite:///{workdir}/{variant}.sqlite") for variant in variants
    }
    # Bare routes get a well-formed key too, unless asked not to: the same request everywhere.
    sent = next((headers for _, headers in apps.values() if headers), None)
    sent = sent or {"Authorization": "Bearer " + generate_key("pk", "live")}
    callers = {}
    for variant, (app, headers) in apps.items():
        headers = headers or ({} if args.bare_without_key else sent)
        call = caller(app, headers, args.mode)
        for _ in range(args.warmup):
            status = call()
        if status != 200:
            raise SystemExit(f"{variant}: warm-up request answered {status}")
        callers[variant] = (call, flusher(app))
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for variant in order:
            call, flush = callers[variant]
            flush()
            started = clock()
            for _ in range(args.n):
                call()
            flush()
            samples[variant].append((clock() - started) / args.n * 1e6)
    print(
        f"mode={args.mode} clock={args.clock} n={args.n} repeats={args.repeats} "
        f"bare request {'without' if args.bare_without_key else 'with'} a key "
        f"python={sys.version.split()[0]}"
    )
    print(f"{'variant':<12}{'µs/req median (min-max)':>28}{'ratio to bare median (min-max)':>34}")
    reference = samples.get("bare")
    for variant in variants:
        micros = samples[variant]
        line = f"{variant:<12}{summary(micros, 1):>28}"
        if reference is not None:
            ratios = [value / bare for value, bare in zip(micros, reference, strict=True)]
            line += f"{summary(ratios, 2):>34}"
        print(line)


if __name__ == "__main__":
    main()
