#!/usr/bin/env python
"""Instructions per rate-limit check on Redis, client side, under callgrind.

    python bench/bench_redis_calls.py [--n 2000 --shapes cold,exact,leased,mixed]
        [--trees .,/path/to/another/checkout] [--redis-url redis://127.0.0.1:6379/0]

What a worker spends to check a request's three counters (a monthly quota and an
organization's minute, shared by every key of the organization, and the key's own minute) in
Redis, through ``LeasedCounters`` over ``RedisCounters`` as the extension builds them:

  cold    every check another key (10,000-key mixes): a lease never serves twice, so every
          check is one script call, with a command packed for keys not seen before
  exact   one key, ``APIKEYS_RATELIMIT_LEASE_SECONDS = 0``: one script call per check
  leased  one key, leases of 0.1 s (the default): a script call every few hundred checks
  mixed   every other check the busy key of ``leased``, the others cold keys (a busy client
          among many quiet ones): the cold keys' cost, and whether the busy key keeps its lease

Each shape runs in its own process under ``valgrind --tool=callgrind``, counting only the
measured loop (``--toggle-collect`` on the ``functools.reduce`` that runs it); ``--trees``
runs the same shapes against other checkouts of flask-apikeys (``git worktree add``) to
compare before and after in one run. Redis' own work is not counted (see ``bench_wrk.py``'s
CPU table for it). Needs valgrind and redis-server (or ``--redis-url``).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 300
SHAPES = {"cold": 0.1, "exact": 0.0, "leased": 0.1, "mixed": 0.1}  # shape -> lease seconds


def run_shape(tree: str, shape: str, n: int, redis_url: str) -> None:
    """The measured process: ``n`` checks of ``shape`` with the flask-apikeys of ``tree``."""
    sys.path.insert(0, tree)
    from limits.storage import storage_from_string

    sys.path.insert(1, str(ROOT))
    from flask_apikeys.limiting.counters import Counter, counters_for
    from flask_apikeys.limiting.leases import LeasedCounters
    from tests.servers import script_calls

    storage = storage_from_string(redis_url)
    counters = LeasedCounters(counters_for(storage), SHAPES[shape])
    tag = f"{{{uuid.uuid4()}}}"

    def counters_of(key: uuid.UUID) -> tuple[Counter, ...]:
        return (
            Counter(f"apikeys:{tag}:quota:2026-12", 10**9, 31 * 86400),
            Counter(f"apikeys:{tag}:organization:60", 10**9, 60, sliding=True),
            Counter(f"apikeys:{tag}:apikey:{key}:60", 10**6, 60, sliding=True),
        )

    if shape == "cold":
        warmup = [counters_of(uuid.uuid4()) for _ in range(WARMUP)]
        measured = [counters_of(uuid.uuid4()) for _ in range(n)]
    elif shape == "mixed":
        busy = counters_of(uuid.uuid4())
        warmup = [busy] * WARMUP
        measured = [busy if index % 2 else counters_of(uuid.uuid4()) for index in range(n)]
    else:
        warmup = measured = [counters_of(uuid.uuid4())] * max(n, WARMUP)
    for taken in warmup[:WARMUP]:
        if counters.take(taken).refused is not None:
            raise SystemExit("a warm-up check was refused")

    def step(count: int, taken: tuple[Counter, ...]) -> int:
        if counters.take(taken).refused is not None:
            raise SystemExit("a check was refused")
        return count + 1

    before = script_calls(redis_url)
    functools.reduce(step, measured[:n], 0)  # callgrind counts inside this call only
    print(f"SCRIPTS {script_calls(redis_url) - before}")
    counters.close()


def measure(tree: str, shape: str, n: int, redis_url: str) -> tuple[int, int]:
    """Instructions counted for ``n`` checks, and the script calls they made."""
    from bench.callgrind import count_instructions  # main() put the checkout on the path

    arguments = ["--run", shape, "--trees", tree, "--n", str(n), "--redis-url", redis_url]
    counted, completed = count_instructions(__file__, arguments)
    scripts = re.search(r"SCRIPTS (\d+)", completed.stdout)
    if scripts is None:
        raise SystemExit(f"{shape} ({tree}) printed no script count:\n{completed.stdout[-2000:]}")
    return counted, int(scripts.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="checks per shape")
    parser.add_argument("--shapes", default="cold,exact,leased,mixed")
    parser.add_argument("--trees", default=str(ROOT), help="checkouts to measure, comma-separated")
    parser.add_argument("--redis-url", help="Redis URL (else a throwaway server)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # inside valgrind
    args = parser.parse_args()
    if args.run:
        run_shape(args.trees, args.run, args.n, args.redis_url)
        return
    sys.path.insert(0, str(ROOT))
    from bench.servers import redis_server

    trees = [str(Path(tree).resolve()) for tree in args.trees.split(",")]
    shapes = args.shapes.split(",")
    if unknown := set(shapes) - set(SHAPES):
        raise SystemExit(f"unknown shapes: {', '.join(sorted(unknown))}")
    print(
        f"python {sys.version.split()[0]}, {args.n} checks per shape; per check: callgrind Ir "
        "(script calls to Redis)"
    )
    print(f"  {'shape':<10}" + "".join(f"{Path(tree).name:>26}" for tree in trees))
    with redis_server(args.redis_url) as url:
        for shape in shapes:
            line = f"  {shape:<10}"
            for tree in trees:
                instructions, scripts = measure(tree, shape, args.n, url)
                line += f"{instructions / args.n:>17,.0f} ({scripts / args.n:.3f})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
