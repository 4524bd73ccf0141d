#!/usr/bin/env python
"""Throughput and latency under gunicorn on 127.0.0.1, loaded by wrk: bare vs protected.

    python bench/bench_wrk.py [--runs 3 --duration 10 --warmup 2 --workers 2]
        [--backends sqlite,postgresql] [--mixes hot,cold]
        [--database-url postgresql+psycopg://…] [--redis-url redis://127.0.0.1:6379/0]
        [--env APIKEYS_USAGE_TRACKING=false …]

Backends (``--backends``, comma-separated; the first two by default):
  sqlite             a SQLite file, rate limits in process memory
  postgresql         PostgreSQL 15 and Redis: the given URLs, else throwaway servers started
                     on 127.0.0.1 for the run (and removed after it)
  postgresql-memory  PostgreSQL 15, rate limits in process memory  } to tell the costs of
  sqlite-redis       a SQLite file, rate limits in Redis           } the two servers apart

Key mixes (``--mixes``): ``hot``, every request sends the same key (cached after its first
use); ``cold``, 10,000 keys stored and every request sends one drawn at random (each key
sends a fraction of a request per second, so nearly every request misses the key cache, as
most keys of a multi-tenant API do). The bare route gets the same requests.

Needs ``wrk`` (apt-get install wrk). For each backend, each round starts gunicorn (sync
workers) for each variant in turn (alternating which goes first), warms it up, and runs
``wrk -t2 -c16 --latency`` for ``--duration`` seconds; every request carries the same key,
also to the bare route. The protected share of bare throughput is paired within a round.
Prints medians and min-max over the rounds. wrk runs on the same machine, so requests/s are
machine-wide figures. The protected app has everything on: the key (cached after its first
use), a scope, the rate limits with their headers and buffered usage tracking.

Then, per request of the measured load (:mod:`bench.accounting`): the CPU µs of the gunicorn
workers, the PostgreSQL backends, redis-server and wrk, and the Redis scripts, Redis commands
(those the scripts ran included) and PostgreSQL transactions. On a shared machine these move
far less than requests/s. ``--env`` passes settings to the protected app through the
environment, e.g. usage tracking off to tell the usage writer's cost from the rest.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.accounting import per_request, snapshot  # noqa: E402
from bench.common import summary  # noqa: E402
from bench.servers import postgresql_server, redis_server  # noqa: E402
from tests.servers import free_port, script_calls  # noqa: E402

#: wrk prints durations with these units (``print_units`` in wrk's source).
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
DURATION = re.compile(r"([\d.]+)(us|ms|s|m|h)")


def to_ms(value: str) -> float:
    """A wrk duration (``812.00us``, ``1.23ms``, ``2.01s``, ``1.05m``) in milliseconds."""
    match = DURATION.fullmatch(value)
    if match is None:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def serve(variant: str, env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "sync"]
        + ["-b", f"127.0.0.1:{port}", "--log-level", "warning", "bench.app:app"],
        cwd=ROOT,
        env={**env, "BENCH_VARIANT": variant, "BENCH_SERVE": "1"},
    )
    # Until a worker answers, not just until the port is open: on a loaded machine workers
    # take many seconds to import, and wrk would measure their boot.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            urllib.request.urlopen(f"http://127.0.0.1:{port}/r", timeout=5).close()
            return process, port
        except urllib.error.HTTPError:
            return process, port  # a worker answered (401: no key sent)
        except OSError:
            if process.poll() is not None:
                code = process.returncode
                raise SystemExit(f"gunicorn for {variant} exited with {code}") from None
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"gunicorn for {variant} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: a graceful stop, so each worker writes the usage rows it still holds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


#: wrk's script for the cold mix: a random key of the file ``BENCH_KEYS_FILE`` per request.
COLD_SCRIPT = """
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS_FILE")) do keys[#keys + 1] = line end
request = function()
  local key = keys[math.random(#keys)]
  return wrk.format(nil, nil, {["Host"] = wrk.host, ["Authorization"] = "Bearer " .. key})
end
"""
COLD_KEYS = 10_000


def load(port: int, keys_file: str, keys: list[str], duration: int) -> dict[str, float]:
    """wrk's figures: ``rps``, ``p50``, ``p99`` (ms), ``requests`` and wrk's own CPU seconds."""
    spent = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = ["wrk", "-t2", "-c16", f"-d{duration}s", "--latency"]
    if len(keys) == 1:
        command += ["-H", f"Authorization: Bearer {keys[0]}"]
    else:
        command += ["-s", keys_file + ".lua"]
    command += [f"http://127.0.0.1:{port}/r"]
    output = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        env={**os.environ, "BENCH_KEYS_FILE": keys_file},
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = after.ru_utime + after.ru_stime - spent.ru_utime - spent.ru_stime
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"{non_2xx.group(1)} requests failed:\n{output}")
    errors = re.search(r"Socket errors: (.*)", output)
    if errors:
        print(f"    wrk: socket errors: {errors.group(1)}", file=sys.stderr)

    def field(pattern: str) -> str:
        match = re.search(pattern, output)
        if match is None:
            raise SystemExit(f"unexpected wrk output (no {pattern!r}):\n{output}")
        return match.group(1)

    return {
        "rps": float(field(r"Requests/sec:\s+([\d.]+)")),
        "p50": to_ms(field(r"\s50%\s+(\S+)")),
        "p99": to_ms(field(r"\s99%\s+(\S+)")),
        "requests": float(field(r"(\d+) requests in")),
        "wrk": wrk_cpu,
    }


def prepare(env: dict[str, str]) -> list[str]:
    """Fresh tables, an organization and its keys in the backend's database; return them."""
    done = subprocess.run(
        [sys.executable, "-c", "from bench.app import prepare; print(' '.join(prepare()))"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.stdout.strip().splitlines()[-1].split()


def usage_rows(database_url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text("SELECT count(*) FROM api_key_usage")).scalar())
    finally:
        engine.dispose()


#: Seconds to wait before reading the counters: a PostgreSQL 15 backend reports its
#: transactions to ``pg_stat_database`` at most once a second, when it goes idle.
STATISTICS_DELAY = 1.1
#: What print_costs shows per request: (key in accounting's figures, heading, digits).
COSTS = (
    ("workers", "workers µs", 0),
    ("postgres", "postgres µs", 0),
    ("redis", "redis µs", 0),
    ("wrk", "wrk µs", 0),
    ("scripts", "Redis scripts", 3),
    ("redis_calls", "Redis commands", 3),
    ("pg_transactions", "PG xacts", 3),
)


def print_costs(costs: dict[str, list[dict[str, float]]]) -> None:
    """CPU per request of each process and round trips per request, median (min-max) of the
    rounds: figures that move much less with the machine's load than requests/s."""
    shown = [
        entry
        for entry in COSTS
        if entry[0] in costs["bare"][0] or entry[0] in costs["protected"][0]
    ]
    print("  per request, measured load only (CPU from /proc and INFO cpu):")
    print(f"  {'variant':<11}" + "".join(f"{heading:>22}" for _, heading, _ in shown))
    for variant, rounds in costs.items():
        line = f"  {variant:<11}"
        for name, _, digits in shown:
            line += f"{summary([cost.get(name, 0.0) for cost in rounds], digits):>22}"
        print(line)


#: backend name -> (label, database, rate-limit storage)
BACKENDS = {
    "sqlite": ("SQLite + memory storage", "sqlite", "memory"),
    "postgresql": ("PostgreSQL 15 + Redis", "postgresql", "redis"),
    "postgresql-memory": ("PostgreSQL 15 + memory storage", "postgresql", "memory"),
    "sqlite-redis": ("SQLite + Redis", "sqlite", "redis"),
}


def measure(label: str, env: dict[str, str], args: argparse.Namespace, mix: str) -> None:
    env = {**env, "BENCH_KEYS": str(COLD_KEYS if mix == "cold" else 1)}
    keys = prepare(env)
    keys_file = os.path.join(tempfile.mkdtemp(prefix="apikeys-wrk-keys-"), "keys")
    Path(keys_file).write_text("\n".join(keys) + "\n")
    Path(keys_file + ".lua").write_text(COLD_SCRIPT)
    results: dict[str, list[dict[str, float]]] = {"bare": [], "protected": []}
    costs: dict[str, list[dict[str, float]]] = {"bare": [], "protected": []}
    requests = 0.0
    database_url = env["DATABASE_URL"]
    redis_url = env.get("REDIS_URL")
    for round_number in range(args.runs):
        order = ["bare", "protected"] if round_number % 2 == 0 else ["protected", "bare"]
        for variant in order:
            process, port = serve(variant, env, args.workers)
            try:
                warmup = load(port, keys_file, keys, args.warmup)  # import, connect, cache
                time.sleep(STATISTICS_DELAY)
                before = snapshot(process.pid, database_url, redis_url)
                result = load(port, keys_file, keys, args.duration)
                time.sleep(STATISTICS_DELAY)
                after = snapshot(process.pid, database_url, redis_url)
                after["wrk"] = result["wrk"]
                results[variant].append(result)
                costs[variant].append(per_request(before, after, int(result["requests"])))
                if variant == "protected":
                    requests += (warmup["rps"] * args.warmup) + (result["rps"] * args.duration)
            finally:
                stop(process)
    print(f"\n{label}, {mix} key{'s' if mix == 'cold' else ''}")
    print(f"  {'variant':<11}{'req/s':>22}{'p50 ms':>22}{'p99 ms':>22}{'share of bare':>20}")
    for variant, runs in results.items():
        shares = [run["rps"] / bare["rps"] for run, bare in zip(runs, results["bare"], strict=True)]
        line = f"  {variant:<11}"
        for name, digits in (("rps", 0), ("p50", 2), ("p99", 2)):
            values = [run[name] for run in runs]
            line += f"{summary(values, digits):>22}"
        share = f"{statistics.median(shares):.0%} ({min(shares):.0%}-{max(shares):.0%})"
        print(line + f"{share:>20}")
    print_costs(costs)
    rows = usage_rows(env["DATABASE_URL"])
    print(f"  usage rows written: {rows} (about {requests:.0f} protected requests were answered)")
    if "REDIS_URL" in env:
        print(f"  rate-limit calls to Redis: {script_calls(env['REDIS_URL'])}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--mixes", default="hot,cold", help="hot, cold or both")
    parser.add_argument("--database-url", help="PostgreSQL URL (else a throwaway server)")
    parser.add_argument("--redis-url", help="Redis URL (else a throwaway server)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="APIKEYS_X=VALUE",
        help="a setting for the protected app, through the environment (repeatable): e.g. "
        "APIKEYS_USAGE_TRACKING=false to tell the usage writer's cost from the rest",
    )
    args = parser.parse_args()
    backends = args.backends.split(",")
    if unknown := set(backends) - set(BACKENDS):
        raise SystemExit(f"unknown backends: {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    print(
        f"gunicorn {args.workers} sync workers, wrk -t2 -c16 -d{args.duration}s --latency, "
        f"{args.runs} rounds; median (min-max) over rounds; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs"
    )
    workdir = tempfile.mkdtemp(prefix="apikeys-wrk-")
    base_env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    for setting in args.env:
        name, _, value = setting.partition("=")
        if not name.startswith("APIKEYS_") or not value:
            raise SystemExit(f"--env takes APIKEYS_NAME=value, not {setting!r}")
        base_env[name] = value
    try:
        with ExitStack() as servers:
            for backend in backends:
                label, database, limits = BACKENDS[backend]
                env = dict(base_env)
                if database == "postgresql":
                    env["DATABASE_URL"] = servers.enter_context(
                        postgresql_server(args.database_url)
                    )
                else:
                    env["DATABASE_URL"] = f"sqlite:///{workdir}/bench.sqlite"
                if limits == "redis":
                    env["REDIS_URL"] = servers.enter_context(redis_server(args.redis_url))
                for mix in args.mixes.split(","):
                    measure(label, env, args, mix)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
