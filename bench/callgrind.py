"""Run a bench script's measured process under callgrind and read back what it counted.

Every instruction-counting bench (``bench_instructions.py``, ``bench_flush.py``,
``bench_redis_calls.py``) runs its measured loop through one ``functools.reduce`` call in a
child process: callgrind counts inside that call only, so start-up and warm-up are excluded.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def count_instructions(
    script: str, arguments: list[str], *, output: str = "/dev/null"
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Instructions counted inside ``functools.reduce`` while ``script`` runs with
    ``arguments``, and the finished process (for what it printed); ``output``: where callgrind
    writes its profile. A failed run stops the bench with the child's error."""
    completed = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={output}",
            sys.executable,
            script,
            *arguments,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if completed.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{completed.stderr[-2000:]}")
    return int(found.group(1)), completed
