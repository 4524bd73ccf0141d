#!/usr/bin/env python
"""Instructions per row of the usage writer's flush alone, under callgrind.

    python bench/bench_flush.py [--n 1000] [--variants protected,cold] [--keep DIR]
        [--backend sqlite|postgresql] [--database-url URL]

``bench_instructions.py`` counts the flush inside its measured loop, spread over the requests
beside everything else a request costs. Here the same app (SQLite + memory, everything on)
serves ``n`` requests of the variant outside the count, and callgrind counts only the one
``flush()`` that writes their rows (``--toggle-collect`` on the ``functools.reduce`` call that
runs it): the writer's own cost per row, SQLite's work included.

Variants (those of ``bench_instructions.py`` that queue usage rows):
  protected   one hot key: every row in the same key and rollup groups
  cold        10,000 keys stored, every request another one: each row its own key counter and
              its own hour and day rollup groups

``--keep DIR`` keeps each variant's callgrind output file there, for ``callgrind_annotate``.

``--backend postgresql`` flushes into PostgreSQL instead (``--database-url``, else a throwaway
PostgreSQL 15 from ``bench/servers.py``; the variants then run one after the other, each
dropping and creating the tables): callgrind counts the client's side of the flush (SQLAlchemy,
psycopg), and the database's CPU during the flush is read from ``/proc`` for every backend
(``bench/accounting.py``, 10 ms ticks: use ``--n 5000`` or more) and reported per row too.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.accounting import snapshot  # noqa: E402
from bench.bench_instructions import (  # noqa: E402
    CONFIG,
    WARMUP,
    prepare,
    requester,
)
from bench.callgrind import count_instructions  # noqa: E402 - after the path is set
from bench.servers import postgresql_server  # noqa: E402


def run_variant(variant: str, n: int, database_url: str, keys_file: str) -> None:
    """The measured process: serve ``n`` requests uncounted, then flush their rows counted."""
    from bench.common import protected_app

    sent: list[str] = json.loads(Path(keys_file).read_text())
    app, _ = protected_app(f"bench_{variant}", database_url, **CONFIG[variant])
    writer = app.extensions["apikeys"].writer
    call = requester(app, "wsgi")
    # The cold variant warms up on keys it does not flush.
    warmup_keys = sent[-WARMUP:] if variant == "cold" else sent
    for index in range(WARMUP):
        call(warmup_keys[index % len(warmup_keys)])
    writer.flush()
    for index in range(n):
        if call(sent[index % len(sent)]) != 200:
            raise SystemExit(f"{variant}: a request was not served")
    if writer.queued != n:
        raise SystemExit(f"{variant}: {writer.queued} rows queued, not {n}")
    gc.collect()
    gc.freeze()
    postgresql = database_url.startswith("postgresql")
    before = snapshot(None, database_url, None) if postgresql else {}
    written = functools.reduce(lambda _, __: writer.flush(), range(1), 0)  # counted
    if postgresql:
        after = snapshot(None, database_url, None)
        print(f"database-cpu {after['postgres'] - before['postgres']:.6f}")
    if written != n:
        raise SystemExit(f"{variant}: {written} rows written, not {n}")


def measure(
    variant: str, n: int, keep: str | None, postgresql_url: str | None = None
) -> tuple[int, float | None]:
    """Instructions counted for one flush of ``n`` rows of ``variant``, and the database's
    CPU seconds during it (PostgreSQL; ``None`` on SQLite)."""
    with tempfile.TemporaryDirectory() as scratch:
        database_url = postgresql_url or f"sqlite:///{scratch}/bench.sqlite"
        keys_file = f"{scratch}/keys.json"
        prepare(variant, database_url, keys_file)
        output = f"{scratch}/callgrind.out"
        arguments = ["--run", variant, "--n", str(n)]
        arguments += ["--run-database-url", database_url, "--keys-file", keys_file]
        counted, completed = count_instructions(__file__, arguments, output=output)
        if keep is not None and os.path.exists(output):
            shutil.copy(output, Path(keep) / f"flush-{variant}.out")
    found = re.search(r"^database-cpu (\S+)$", completed.stdout, re.MULTILINE)
    return counted, float(found.group(1)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="rows in the flush")
    parser.add_argument("--variants", default="protected,cold")
    parser.add_argument("--keep", help="a directory for the callgrind output files")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--database-url", help="PostgreSQL URL (else a throwaway server)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # inside valgrind
    parser.add_argument("--run-database-url", help=argparse.SUPPRESS)
    parser.add_argument("--keys-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_variant(args.run, args.n, args.run_database_url, args.keys_file)
        return
    variants = args.variants.split(",")
    print(f"python {sys.version.split()[0]}, one flush of {args.n} rows, callgrind Ir")
    if args.backend == "postgresql":
        print(f"  {'variant':<12}{'instructions/row':>18}{'database µs/row':>18}")
        with postgresql_server(args.database_url) as url:
            for variant in variants:  # one database: one variant at a time
                count, database_cpu = measure(variant, args.n, args.keep, url)
                cpu = f"{(database_cpu or 0.0) * 1e6 / args.n:>18,.1f}"
                print(f"  {variant:<12}{count / args.n:>18,.0f}{cpu}", flush=True)
        return
    print(f"  {'variant':<12}{'instructions/row':>18}")
    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        counted = pool.map(measure, variants, [args.n] * len(variants), [args.keep] * len(variants))
        for variant, (count, _) in zip(variants, counted, strict=True):
            print(f"  {variant:<12}{count / args.n:>18,.0f}", flush=True)


if __name__ == "__main__":
    main()
