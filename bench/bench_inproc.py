#!/usr/bin/env python
"""Per-request cost in process: a bare Flask route vs the same route behind flask-apikeys.

    python bench/bench_inproc.py [--n 5000 --repeats 7 --mode testclient|wsgi]

Each repeat runs every variant once, in rotated order, and ratios are paired within a repeat
(variant / bare of the same repeat); the table shows the median and min-max over repeats.
Variants (``--variants``, comma-separated):
  bare        the route, no extension
  sqlalchemy  the route in an app with Flask-SQLAlchemy (what the extension needs) but no keys
  disabled    the extension installed with APIKEYS_ENABLED = False
  auth        a valid cached key and @require_scopes; rate limits and usage tracking off
  limits      auth + rate limits (memory storage) and their response headers; usage off
  protected   everything on: auth, scopes, rate limits with headers, buffered usage tracking

``--clock cpu`` measures the process's CPU time (all threads, so the usage writer's too) instead
of wall time: less sensitive to other work on the machine, and still charges every thread.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask  # noqa: E402
from flask_sqlalchemy import SQLAlchemy  # noqa: E402

from flask_apikeys import APIKeys, require_scopes  # noqa: E402


def build(variant: str, database_url: str) -> tuple[Flask, dict[str, str]]:
    app = Flask(f"bench_{variant}")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, APIKEYS_HASH_SECRET="b" * 32)
    headers: dict[str, str] = {}
    if variant == "bare":

        @app.get("/r")
        def bare() -> dict[str, bool]:
            return {"ok": True}

        return app, headers
    if variant == "sqlalchemy":
        SQLAlchemy(app)

        @app.get("/r")
        def bare_with_database() -> dict[str, bool]:
            return {"ok": True}

        return app, headers
    if variant == "disabled":
        app.config["APIKEYS_ENABLED"] = False
    if variant == "auth":
        app.config.update(APIKEYS_RATELIMIT_ENABLED=False, APIKEYS_USAGE_TRACKING=False)
    if variant == "limits":
        app.config["APIKEYS_USAGE_TRACKING"] = False
    db = SQLAlchemy(app)
    apikeys = APIKeys(app, db=db)

    @app.get("/r")
    @require_scopes("bench:read")
    def protected() -> dict[str, bool]:
        return {"ok": True}

    with app.app_context():
        apikeys.create_all()
        organization = apikeys.create_organization(
            name=variant,
            email="bench@example.com",
            plan="enterprise",
            rate_limit_per_minute=10**9,
            monthly_request_limit=10**9,
        )
        headers["Authorization"] = (
            "Bearer " + apikeys.create_key(organization, "bench", scopes=["bench:*"]).key
        )
    return app, headers


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--mode", choices=["testclient", "wsgi"], default="testclient")
    parser.add_argument("--variants", default="bare,disabled,auth,limits,protected")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    variants = args.variants.split(",")
    workdir = tempfile.mkdtemp(prefix="apikeys-bench-")
    callers = {}
    for variant in variants:
        app, headers = build(variant, f"sqlite:///{workdir}/{variant}.sqlite")
        call = caller(app, headers, args.mode)
        for _ in range(args.warmup):
            status = call()
        if status != 200:
            raise SystemExit(f"{variant}: warm-up request answered {status}")
        callers[variant] = call
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for variant in order:
            call = callers[variant]
            started = clock()
            for _ in range(args.n):
                call()
            samples[variant].append((clock() - started) / args.n * 1e6)
    print(
        f"mode={args.mode} clock={args.clock} n={args.n} repeats={args.repeats} "
        f"python={sys.version.split()[0]}"
    )
    print(f"{'variant':<12}{'µs/req median':>15}{'min-max':>20}{'ratio median':>14}{'min-max':>16}")
    for variant in variants:
        micros = samples[variant]
        ratios = [
            value / bare for value, bare in zip(micros, samples.get("bare", micros), strict=True)
        ]
        print(
            f"{variant:<12}{statistics.median(micros):>15.1f}{min(micros):>10.1f}-{max(micros):<9.1f}"
            f"{statistics.median(ratios):>14.2f}{min(ratios):>10.2f}-{max(ratios):<5.2f}"
        )


if __name__ == "__main__":
    main()
