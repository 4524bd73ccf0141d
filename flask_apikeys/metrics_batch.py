"""Requests counted in batches: a request appends its figures, a sync adds them up.

Each prometheus_client update takes a lock and runs several Python calls; a request with the
metrics on paid three (its counter, the latency histogram's sum and its bucket). Here a request
appends one tuple to a :class:`collections.deque` (one C call, which many threads may make at
once without losing any), and :meth:`RequestBatch.fold`, run by the recorder's sync under its
lock (the only reader), pops what is there, adds it up in plain dicts and makes one update per
series it touched: a thousand requests of one key become one increment. The price is staleness:
prometheus_client sees a request at the next sync (:mod:`flask_apikeys.metrics`).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import groupby
from operator import is_not, itemgetter
from typing import Any, cast

from prometheus_client import Counter, Histogram

from .usage.insert import USAGE_FIELDS
from .usage.rows import (
    QUOTA_FIELD,
    TAKEN_FIELDS,
    UNMATCHED_ENDPOINT,
    VERIFICATION_SECONDS_FIELD,
    quota_figure,
)

#: A finished request: (the verified key, its URL rule, the response's status, the seconds its
#: verification took or ``None``, its cost, what the limits took or ``None``); for a refused
#: credential, ``(None, None, 0, seconds, None, None)``.
Finished = tuple[Any, Any, int, "float | None", Any, Any]
#: A usage row's series: organization, endpoint, status (and key, when labelled by key).
_SERIES = itemgetter(*map(TAKEN_FIELDS.index, ("organization_id", "endpoint", "status_code")))
_SERIES_WITH_KEY = itemgetter(
    *map(TAKEN_FIELDS.index, ("organization_id", "endpoint", "status_code", "api_key_id"))
)
_SECONDS = itemgetter(VERIFICATION_SECONDS_FIELD)
_QUOTA = itemgetter(QUOTA_FIELD)
_COST = itemgetter(TAKEN_FIELDS.index("cost_usd"))
_IS_NOT_NONE = partial(is_not, None)
_TAKEN_LENGTH = len(TAKEN_FIELDS)
#: Requests a process may hold between two syncs before the request that finds this many
#: folds them itself (when the sync thread cannot keep up, or syncs rarely).
MAX_PENDING = 10_000
MAX_REMEMBERED_SERIES = 100_000


def _padded(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row with its stored columns only, as one from the response step without metrics."""
    if len(row) == _TAKEN_LENGTH:
        return row
    return (*row[: len(USAGE_FIELDS)], None, None)


def status_class(status: int) -> str:
    """``"2xx"`` for 204: five values, whatever a view answers."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class LatencyTally:
    """Observations of one histogram child, added up: a count per bucket and the sum."""

    def __init__(self, child: Any, upper_bounds: list[float]) -> None:
        self.child = child
        self.upper_bounds = upper_bounds
        self.counts = [0] * (len(upper_bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0
        self.batched = batched_observations_supported(child, upper_bounds)

    def add(self, values: list[float]) -> None:
        """Count ``values`` in their buckets (each in the first whose bound is ≥ it, as
        ``observe`` does)."""
        if not self.batched:
            for seconds in values:
                self.child.observe(seconds)
            return
        # Sorted once (in C), each bucket's count is where its bound falls: no Python per value.
        counts, ordered = self.counts, sorted(values)
        below = 0
        for bucket, bound in enumerate(self.upper_bounds):
            up_to = bisect.bisect_right(ordered, bound, below)
            counts[bucket] += up_to - below
            below = up_to
        counts[-1] += len(ordered) - below
        self.total += sum(values)

    def move_into_child(self) -> None:
        """Observe what was added, one update per bucket touched, and start again from 0."""
        if not self.batched or not any(self.counts):
            return
        # What Histogram.observe does for one value (_sum, then the first bucket ≥ it), for all
        # of them at once; batched_observations_supported checked the attributes exist.
        self.child._sum.inc(self.total)
        for bucket, count in enumerate(self.counts):
            if count:
                self.child._buckets[bucket].inc(count)
        self.counts = [0] * len(self.counts)
        self.total = 0.0


def batched_observations_supported(child: Any, upper_bounds: list[float]) -> bool:
    """Whether ``child`` (a labelled :class:`~prometheus_client.Histogram`) keeps its sum and
    its buckets as prometheus_client has since 0.1 (``tests/test_metrics_batch.py`` checks the
    installed version observes the same either way); if not, each value is observed alone."""
    buckets = getattr(child, "_buckets", None)
    return (
        hasattr(getattr(child, "_sum", None), "inc")
        and isinstance(buckets, list)
        and all(hasattr(bucket, "inc") for bucket in buckets)
        and list(getattr(child, "_upper_bounds", ())) == [*upper_bounds, math.inf]
    )


class RequestBatch:
    """The requests a process finished since its last sync, and how they reach the metrics.

    :param requests: ``apikeys_requests_total``; ``key_id_label`` when it has ``key_id``.
    :param verification: the latency histogram, labelled by ``outcome``.
    :param cost: ``apikeys_cost_usd_total``.
    """

    def __init__(
        self,
        requests: Counter,
        verification: Histogram,
        cost: Counter,
        upper_bounds: tuple[float, ...],
        *,
        key_id_label: bool,
    ) -> None:
        self.requests = requests
        self.cost = cost
        self.key_id_label = key_id_label
        #: Appended to by requests (any thread), popped only by :meth:`fold`.
        self.finished: deque[Finished] = deque()
        bounds = list(upper_bounds)
        self.accepted = LatencyTally(verification.labels("accepted"), bounds)
        self.refused = LatencyTally(verification.labels("refused"), bounds)
        self._request_children: dict[tuple[Any, ...], Any] = {}
        #: Batches of usage rows (:data:`~flask_apikeys.signals.usage_rows_taken`), appended
        #: by the writer's receiver, popped only by :meth:`fold`.
        self.taken: deque[tuple[tuple[Any, ...], ...]] = deque()

    def forget_parent(self) -> None:
        """In a forked worker: the parent's requests are the parent's to count."""
        self.finished.clear()
        self.taken.clear()

    def fold(self, see_quota: Callable[[Any, str, tuple[int, int]], None]) -> None:
        """Add up the requests finished so far into the metrics; ``see_quota(organization id,
        month, (used, limit))`` for each quota figure. The caller holds the sync lock: requests
        appended meanwhile wait for the next fold, none is lost or counted twice."""
        accepted: list[float] = []
        refused: list[float] = []
        #: series (organization id, endpoint, status, key id or None) → [requests, cost]
        counted: dict[tuple[Any, ...], list[Any]] = {}
        quotas: dict[tuple[int, str], tuple[int, int, Any]] = {}  # → (used, limit, org id)
        self._fold_finished(accepted, refused, counted, quotas)
        self._fold_taken(accepted, counted, quotas)
        costs: dict[Any, float] = {}
        for series, (count, cost) in counted.items():
            self._request_child(series).inc(count)
            if cost:
                costs[series[0]] = costs.get(series[0], 0.0) + cost
        for organization_id, cost in costs.items():
            self.cost.labels(str(organization_id)).inc(cost)
        for (_, month_label), (used, limit, organization_id) in quotas.items():
            see_quota(organization_id, month_label, (used, limit))
        self.accepted.add(accepted)
        self.refused.add(refused)
        self.accepted.move_into_child()
        self.refused.move_into_child()

    def _fold_finished(
        self,
        accepted: list[float],
        refused: list[float],
        counted: dict[tuple[Any, ...], list[Any]],
        quotas: dict[tuple[int, str], tuple[int, int, Any]],
    ) -> None:
        """The requests Flask's ``request_finished`` appended (usage tracking off or ``sync``),
        and the refused credentials' latencies."""
        # Added up by the identity of the key snapshot and the URL rule (alive in the tally, so
        # an id is not reused during the fold): a key's UUID hashes in Python, a VerifiedKey
        # (a frozen dataclass) hashes every field, and a Rule does not hash at all.
        tallies: dict[tuple[int, int, int], list[Any]] = {}  # → [count, cost, key, rule]
        finished, popleft = self.finished, self.finished.popleft
        for _ in range(len(finished)):
            key, rule, status, seconds, cost, result = popleft()
            if key is None:  # a refused credential: always timed
                refused.append(cast(float, seconds))
                continue
            if seconds is not None:  # None when a key function verified it outside the hook
                accepted.append(seconds)
            found = (id(key), id(rule), status)
            tally = tallies.get(found)
            if tally is None:
                tally = tallies[found] = [0, 0.0, key, rule]
            tally[0] += 1
            if isinstance(cost, float) and cost > 0:
                tally[1] += cost
            if result is not None:
                _see_quota(quotas, key.organization.id, quota_figure(result))
        for (_, _, status), (count, cost, key, rule) in tallies.items():
            endpoint = UNMATCHED_ENDPOINT if rule is None else rule.rule
            key_id = key.id if self.key_id_label else None
            _add(counted, (key.organization.id, endpoint, status, key_id), count, cost)

    def _fold_taken(
        self,
        accepted: list[float],
        counted: dict[tuple[Any, ...], list[Any]],
        quotas: dict[tuple[int, str], tuple[int, int, Any]],
    ) -> None:
        """The usage rows :data:`~flask_apikeys.signals.usage_rows_taken` handed over (usage
        tracking on): one per authenticated request, each already holding its organization,
        key, endpoint, status, cost, verification seconds and limits' result.

        A batch is walked by C code (``map``, ``itemgetter``, ``groupby``) and Python runs once
        per run of rows of one series, not once per row: a batch is mostly a few keys' runs.
        """
        series_of = _SERIES_WITH_KEY if self.key_id_label else _SERIES
        taken, popleft = self.taken, self.taken.popleft
        for _ in range(len(taken)):
            rows: Sequence[tuple[Any, ...]] = popleft()
            if min(map(len, rows), default=_TAKEN_LENGTH) < _TAKEN_LENGTH:  # queued by other code
                rows = [_padded(row) for row in rows]
            accepted.extend(filter(_IS_NOT_NONE, map(_SECONDS, rows)))
            with_costs = any(map(_COST, rows))
            for series, run in groupby(rows, series_of):
                run_rows = list(run)
                cost = 0.0
                if with_costs:
                    cost = sum(cost for cost in map(_COST, run_rows) if cost and cost > 0)
                organization_id = series[0]
                key_id = series[-1] if self.key_id_label else None
                _add(counted, (organization_id, series[1], series[2], key_id), len(run_rows), cost)
                _see_run_quotas(quotas, organization_id, run_rows)

    def _request_child(self, series: tuple[Any, ...]) -> Any:
        """The labelled counter of a series, found by its raw values: ``labels()`` validates
        and formats its arguments on every call."""
        child = self._request_children.get(series)
        if child is None:
            organization_id, endpoint, status, key_id = series
            labels = [str(organization_id), endpoint, status_class(status)]
            if self.key_id_label:
                labels.append(str(key_id))
            if len(self._request_children) >= MAX_REMEMBERED_SERIES:
                self._request_children.clear()
            child = self._request_children[series] = self.requests.labels(*labels)
        return child


def _see_run_quotas(
    quotas: dict[tuple[int, str], tuple[int, int, Any]],
    organization_id: Any,
    run_rows: list[tuple[Any, ...]],
) -> None:
    """See the quota figure of a run's latest request, not of every request, unless the run
    crosses into a new month: then each figure, so the month that ended keeps its last one.

    Of two requests finishing out of order the later may report less; the gauge never goes
    down, and the next sync with a newer request of the organization brings it up to date.
    """
    latest = next(filter(_IS_NOT_NONE, map(_QUOTA, reversed(run_rows))), None)
    if latest is None:
        return
    earliest = next(filter(_IS_NOT_NONE, map(_QUOTA, run_rows)))
    if earliest[2] == latest[2]:
        _see_quota(quotas, organization_id, latest)
        return
    for figure in filter(_IS_NOT_NONE, map(_QUOTA, run_rows)):
        _see_quota(quotas, organization_id, figure)


def _add(counted: dict[tuple[Any, ...], list[Any]], series: tuple[Any, ...], count: int,
         cost: float) -> None:  # fmt: skip
    """Add ``count`` requests and ``cost`` to a series of ``apikeys_requests_total``."""
    total = counted.get(series)
    if total is None:
        counted[series] = [count, cost]
    else:
        total[0] += count
        total[1] += cost


def _see_quota(
    quotas: dict[tuple[int, str], tuple[int, int, Any]],
    organization_id: Any,
    figure: tuple[int, int, str] | None,
) -> None:
    """Keep the largest quota figure ``(used, limit, month)`` of an organization's month; two
    threads may finish out of order, the counter only grows."""
    if figure is None:
        return
    used, limit, month_label = figure
    quota = (id(organization_id), month_label)
    if used >= quotas.get(quota, (-1, 0, None))[0]:
        quotas[quota] = (used, limit, organization_id)
