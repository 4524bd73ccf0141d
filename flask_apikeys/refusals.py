"""Refused attempts on their way to the audit trail: repeats counted, not written one by one.

A client retrying a wrong key hundreds of times a second must not make us build, hash-chain
and insert one audit record per request (a refusal then cost more than a served request). The
refusals waiting for the writer's next flush are kept here, one entry per distinct attempt —
the same reason, client address, user agent, method, path and presented credential — with the
number of times it was refused. The flush writes each entry as one ``auth.refused`` (or
``auth.expired``) record whose ``details`` carry ``count`` and, for a repeat, ``last_at``: the
count is exact, nothing is lost, and the window is one flush (``APIKEYS_USAGE_FLUSH_INTERVAL``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from time import time
from typing import Any

#: An attempt: what makes two refusals the same record (see :meth:`RefusalTally.add`).
Attempt = tuple[Hashable, ...]


class RefusalTally:
    """The refused attempts of one app since the writer's last flush, each with its count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: attempt → [its audit record (built on first sight), times refused, last refusal]
        self._pending: dict[Attempt, list[Any]] = {}

    def add(self, attempt: Attempt, build_record: Callable[[], dict[str, Any]]) -> bool:
        """Count one refusal of ``attempt``; ``True`` when it is the first since the last flush
        (its record was built, with ``build_record``).

        Under a lock: two requests refused at once must both be counted, and a flush taking
        the entries must see each refusal exactly once.
        """
        with self._lock:
            entry = self._pending.get(attempt)
            if entry is not None:
                entry[1] += 1
                entry[2] = time()
                return False
            self._pending[attempt] = [build_record(), 1, None]
            return True

    def __len__(self) -> int:
        return len(self._pending)

    def take(self) -> list[dict[str, Any]]:
        """The audit records of every attempt counted since the last call, in the order they
        were first refused, each with its ``count`` (and ``last_at`` when refused again)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        records = []
        for record, count, last in pending.values():
            details = {**record["details"], "count": count}
            if last is not None:
                details["last_at"] = datetime.fromtimestamp(last, UTC).isoformat()
            records.append({**record, "details": details})
        return records
