#!/usr/bin/env python
"""Instructions per row of the usage writer's flush alone, under callgrind.

    python bench/bench_flush.py [--n 1000] [--variants protected,cold] [--keep DIR]

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
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_instructions import (  # noqa: E402
    CONFIG,
    WARMUP,
    prepare,
    requester,
)
from bench.callgrind import count_instructions  # noqa: E402 - after the path is set


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
    written = functools.reduce(lambda _, __: writer.flush(), range(1), 0)  # counted
    if written != n:
        raise SystemExit(f"{variant}: {written} rows written, not {n}")


def measure(variant: str, n: int, keep: str | None) -> int:
    """Instructions counted for one flush of ``n`` rows of ``variant``."""
    with tempfile.TemporaryDirectory() as scratch:
        database_url = f"sqlite:///{scratch}/bench.sqlite"
        keys_file = f"{scratch}/keys.json"
        prepare(variant, database_url, keys_file)
        output = f"{scratch}/callgrind.out"
        arguments = ["--run", variant, "--n", str(n)]
        arguments += ["--database-url", database_url, "--keys-file", keys_file]
        counted, _ = count_instructions(__file__, arguments, output=output)
        if keep is not None and os.path.exists(output):
            shutil.copy(output, Path(keep) / f"flush-{variant}.out")
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="rows in the flush")
    parser.add_argument("--variants", default="protected,cold")
    parser.add_argument("--keep", help="a directory for the callgrind output files")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # inside valgrind
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--keys-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_variant(args.run, args.n, args.database_url, args.keys_file)
        return
    variants = args.variants.split(",")
    print(f"python {sys.version.split()[0]}, one flush of {args.n} rows, callgrind Ir")
    print(f"  {'variant':<12}{'instructions/row':>18}")
    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        counted = pool.map(measure, variants, [args.n] * len(variants), [args.keep] * len(variants))
        for variant, count in zip(variants, counted, strict=True):
            print(f"  {variant:<12}{count / args.n:>18,.0f}", flush=True)


if __name__ == "__main__":
    main()
