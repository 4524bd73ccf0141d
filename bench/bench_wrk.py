#!/usr/bin/env python
"""Throughput and latency under gunicorn on 127.0.0.1, loaded by wrk: bare vs protected.

    python bench/bench_wrk.py [--runs 3 --duration 10 --workers 2]
        [--database-url postgresql+psycopg://…] [--redis-url redis://127.0.0.1:6379/0]

Needs ``wrk`` (apt-get install wrk). Each round starts gunicorn (sync workers) for each variant
in turn, warms it up, and runs ``wrk -t2 -c16 --latency``; the protected share of bare
throughput is paired within a round. Prints medians and min-max over the rounds. wrk runs on
the same machine, so requests/s are machine-wide figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def serve(variant: str, env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.app:app",
        ],
        cwd=ROOT,
        env={**env, "BENCH_VARIANT": variant, "BENCH_SERVE": "1"},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"gunicorn for {variant} did not start")


def load(port: int, key: str, duration: int) -> dict[str, float]:
    command = [
        "wrk",
        "-t2",
        "-c16",
        f"-d{duration}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {key}",
        f"http://127.0.0.1:{port}/r",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"{non_2xx.group(1)} requests failed:\n{output}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50": to_ms(re.search(r"50%\s+(\S+)", output).group(1)),  # type: ignore[union-attr]
        "p99": to_ms(re.search(r"99%\s+(\S+)", output).group(1)),  # type: ignore[union-attr]
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    workdir = tempfile.mkdtemp(prefix="apikeys-wrk-")
    env = {**os.environ, "DATABASE_URL": args.database_url or f"sqlite:///{workdir}/bench.sqlite"}
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    key = (
        subprocess.run(
            [sys.executable, "-c", "from bench.app import prepare; print(prepare())"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    results: dict[str, list[dict[str, float]]] = {"bare": [], "protected": []}
    for round_number in range(args.runs):
        order = ["bare", "protected"] if round_number % 2 == 0 else ["protected", "bare"]
        for variant in order:
            process, port = serve(variant, env, args.workers)
            try:
                load(port, key, 2)  # warm-up: workers import, connect, fill the cache
                results[variant].append(load(port, key, args.duration))
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    storage = "Redis" if args.redis_url else "memory"
    print(
        f"gunicorn {args.workers} sync workers, wrk -t2 -c16 -d{args.duration}s, "
        f"{args.runs} rounds, {backend} + {storage}"
    )
    print(
        f"{'variant':<11}{'req/s median':>14}{'min-max':>18}{'p50 ms':>9}{'p99 ms':>9}{'share':>8}"
    )
    for variant, runs in results.items():
        shares = [run["rps"] / bare["rps"] for run, bare in zip(runs, results["bare"], strict=True)]
        rps = [run["rps"] for run in runs]
        print(
            f"{variant:<11}{statistics.median(rps):>14.0f}{min(rps):>9.0f}-{max(rps):<8.0f}"
            f"{statistics.median(r['p50'] for r in runs):>9.2f}"
            f"{statistics.median(r['p99'] for r in runs):>9.2f}"
            f"{statistics.median(shares):>7.0%}"
        )


if __name__ == "__main__":
    main()
