"""CPU seconds and round trips of the processes a server bench involves, read between loads.

On a shared machine requests per second move with the neighbours' load; the CPU each process
spent per request does much less. :func:`snapshot` reads, for one moment:

- ``workers``: utime + stime (``/proc/<pid>/stat``, all threads) of a gunicorn master and
  its workers (the usage writer's thread included);
- ``postgres``: the same for every process ``pg_stat_activity`` lists (the backends, the
  workers' connections among them, and the auxiliary processes) and the postmaster;
- ``redis``: ``used_cpu_user + used_cpu_sys`` from ``INFO cpu``;
- ``redis_calls``: commands Redis ran (``INFO commandstats``), ``scripts`` the Lua ones;
- ``pg_transactions``: ``xact_commit + xact_rollback`` of the database (``pg_stat_database``).

The difference of two snapshots taken around a load, divided by its requests, is what each
part cost per request. Processes that ended between the snapshots are not counted: take the
second one before stopping the server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) of a live process; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15


def children(parent: int) -> list[int]:
    """The pids whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def snapshot(
    gunicorn_pid: int | None, database_url: str | None, redis_url: str | None
) -> dict[str, float]:
    """What the processes spent so far (see the module's docstring); parts without a server
    are left out."""
    counts: dict[str, float] = {}
    if gunicorn_pid is not None:
        pids = [gunicorn_pid, *children(gunicorn_pid)]
        counts["workers"] = sum(map(process_cpu, pids))
    if database_url is not None and database_url.startswith("postgresql"):
        counts.update(_postgresql(database_url))
    if redis_url is not None:
        counts.update(_redis(redis_url))
    return counts


def _postgresql(database_url: str) -> dict[str, float]:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            pids = connection.execute(sa.text("SELECT pid FROM pg_stat_activity")).scalars()
            transactions = connection.execute(
                sa.text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                    " WHERE datname = current_database()"
                )
            ).scalar_one()
            backends = list(pids)
            postmaster = parent_of(backends[0]) if backends else None
    finally:
        engine.dispose()
    cpu = sum(map(process_cpu, backends))
    if postmaster is not None:
        cpu += process_cpu(postmaster)
    return {"postgres": cpu, "pg_transactions": float(transactions)}


def _redis(url: str) -> dict[str, float]:
    import redis

    client: Any = redis.Redis.from_url(url)
    try:
        cpu = client.info("cpu")
        stats = client.info("commandstats")
    finally:
        client.close()
    calls = sum(stat.get("calls", 0) for name, stat in stats.items() if name != "cmdstat_info")
    scripts = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
    return {
        "redis": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "redis_calls": float(calls),  # INFO (the snapshots') left out
        "scripts": float(scripts),
    }


def per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """Each part's difference divided by ``requests`` (CPU parts in µs)."""
    result = {}
    for name, value in after.items():
        scale = 1e6 if name in ("workers", "postgres", "redis", "wrk") else 1.0
        result[name] = (value - before.get(name, 0.0)) * scale / max(requests, 1)
    return result
