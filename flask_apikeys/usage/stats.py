"""Usage statistics from the rollups: totals, by day, endpoint and status class, latency.

Every figure is a sum over :mod:`~flask_apikeys.usage.rollups` rows: whole UTC days from the day
rollups, the hours at the edges of a period from the hour rollups. Reading a month touches at
most 31 rows per group (key, method, endpoint, status class, error code), however many requests
it had. A period is read in whole hours: one whose bounds fall inside hours is widened to them.

p50 and p95 come from the merged latency histograms: the bucket holding the rank ⌈p·n⌉
(the nearest-rank method), interpolated linearly inside it. The true percentile lies in the
same bucket, so the figure is off by less than that bucket's width (its edges are
:data:`~flask_apikeys.models.LATENCY_BUCKET_EDGES_MS`: 1–1.5× steps, e.g. 100–150 ms). Past
the last edge (30 s) the edge itself is given.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import InvalidInput
from ..models import (
    ALL_KEYS,
    LATENCY_BUCKET_COLUMNS,
    LATENCY_BUCKET_EDGES_MS,
    NO_ERROR_CODE,
    APIKeyUsageRollup,
)

#: Where statistics are read from: a session, or a connection of their own.
Reader = Session | sa.Connection
MONTH_PATTERN = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
rollups: sa.Table = APIKeyUsageRollup.__table__  # type: ignore[assignment]


def month_bounds(month: str) -> tuple[date, date]:
    """``"2026-01"`` → (2026-01-01, 2026-02-01), the end excluded."""
    match = MONTH_PATTERN.fullmatch(month) if isinstance(month, str) else None
    if match is None:
        raise InvalidInput(errors={"month": ["a month such as 2026-01"]})
    try:
        start = date(int(match[1]), int(match[2]), 1)
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    except ValueError:  # year 0, or a month whose end is past year 9999
        raise InvalidInput(errors={"month": ["a month from 0001-01 to 9999-11"]}) from None
    return start, end


def current_month() -> str:
    """The current calendar month in UTC, e.g. ``"2026-01"``: the default period of usage."""
    return datetime.now(UTC).strftime("%Y-%m")


def _as_datetime(day: date | datetime) -> datetime:
    if isinstance(day, datetime):
        return day if day.tzinfo else day.replace(tzinfo=UTC)
    return datetime.combine(day, time.min, tzinfo=UTC)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _period_condition(begin: datetime, finish: datetime) -> sa.ColumnElement[bool]:
    """The rollup rows that add up to ``begin``–``finish`` (whole hours): day rows for the
    whole days, hour rows for the hours before the first and after the last of them."""
    begin, whole_hour = _floor_hour(begin), _floor_hour(finish)
    finish = whole_hour if whole_hour == finish else whole_hour + timedelta(hours=1)
    first_day = begin.replace(hour=0)
    if first_day < begin:
        first_day += timedelta(days=1)
    last_day = finish.replace(hour=0)
    granularity, bucket = rollups.c.granularity, rollups.c.bucket_start
    if first_day >= last_day:  # no whole day inside: hours only
        return sa.and_(granularity == "hour", bucket >= begin, bucket < finish)
    parts = [sa.and_(granularity == "day", bucket >= first_day, bucket < last_day)]
    if begin < first_day:
        parts.append(sa.and_(granularity == "hour", bucket >= begin, bucket < first_day))
    if last_day < finish:
        parts.append(sa.and_(granularity == "hour", bucket >= last_day, bucket < finish))
    return parts[0] if len(parts) == 1 else sa.or_(*parts)


def usage_stats(
    session: Reader,
    organization_id: uuid.UUID,
    *,
    start: date | datetime,
    end: date | datetime,
    api_key_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Usage of an organization (or one of its keys) from ``start`` up to ``end`` (excluded)."""
    if not isinstance(start, date) or not isinstance(end, date):
        raise InvalidInput(errors={"start": ["a date"], "end": ["a date"]})
    begin, finish = _as_datetime(start), _as_datetime(end)
    if finish <= begin:
        raise InvalidInput(errors={"end": ["after start"]})
    if finish - begin > timedelta(days=3660):
        raise InvalidInput(errors={"end": ["at most ten years after start"]})
    conditions = [
        rollups.c.organization_id == organization_id,
        _period_condition(begin.astimezone(UTC), finish.astimezone(UTC)),
    ]
    conditions.append(rollups.c.api_key_id == (ALL_KEYS if api_key_id is None else api_key_id))
    where = sa.and_(*conditions)
    requests, errors = sa.func.sum(rollups.c.requests), sa.func.sum(rollups.c.errors)
    latency = sa.func.sum(rollups.c.latency_sum_ms)
    # One query per shape: by status class and error code (a handful of rows, which also add
    # up to the totals and the histogram), by day, by endpoint.
    outcome = session.execute(
        sa.select(
            rollups.c.status_class,
            rollups.c.error_code,
            requests,
            errors,
            sa.func.sum(rollups.c.tokens_used),
            sa.func.sum(rollups.c.cost_usd),
            latency,
            *(sa.func.sum(rollups.c[name]) for name in LATENCY_BUCKET_COLUMNS),
        )
        .where(where)
        .group_by(rollups.c.status_class, rollups.c.error_code)
    ).all()
    day = sa.func.date(rollups.c.bucket_start)
    by_day = session.execute(
        sa.select(day, requests, errors).where(where).group_by(day).order_by(day)
    ).all()
    by_endpoint = session.execute(
        sa.select(rollups.c.method, rollups.c.endpoint, requests, errors, latency)
        .where(where)
        .group_by(rollups.c.method, rollups.c.endpoint)
        .order_by(requests.desc(), rollups.c.endpoint)
    ).all()
    totals = [0, 0, 0, 0.0, 0.0]
    histogram = [0] * len(LATENCY_BUCKET_COLUMNS)
    by_status: dict[int, int] = {}
    error_codes: dict[str, int] = {}
    for status_class, error_code, *sums in outcome:
        for index in range(5):
            totals[index] += sums[index] or 0
        histogram = [a + int(b or 0) for a, b in zip(histogram, sums[5:], strict=True)]
        by_status[int(status_class)] = by_status.get(int(status_class), 0) + int(sums[0])
        if error_code != NO_ERROR_CODE:
            error_codes[error_code] = error_codes.get(error_code, 0) + int(sums[0])
    count = int(totals[0])
    return {
        "start": begin.date().isoformat(),
        "end": finish.date().isoformat(),
        "total_requests": count,
        "errors": int(totals[1]),
        "tokens_used": int(totals[2]),
        "cost_usd": round(float(totals[3]), 6),
        "average_ms": None if not count else round(float(totals[4]) / count, 3),
        "p50_ms": percentile(histogram, 0.50),
        "p95_ms": percentile(histogram, 0.95),
        "by_day": [
            {"date": str(row[0])[:10], "requests": int(row[1]), "errors": int(row[2] or 0)}
            for row in by_day
            if row[1]
        ],
        "by_endpoint": [
            {
                "method": row[0],
                "endpoint": row[1],
                "requests": int(row[2]),
                "errors": int(row[3] or 0),
                "average_ms": round(float(row[4]) / int(row[2]), 3),
            }
            for row in by_endpoint
            if row[2]
        ],
        "by_status_class": {
            f"{status_class}xx": requests_of_class
            for status_class, requests_of_class in sorted(by_status.items())
            if requests_of_class
        },
        "error_codes": dict(
            sorted(
                ((code, n) for code, n in error_codes.items() if n),
                key=lambda item: (-item[1], item[0]),
            )
        ),
    }


def percentile(histogram: list[int], fraction: float) -> float | None:
    """The ``fraction`` percentile of a merged latency histogram (one count per bucket of
    :data:`~flask_apikeys.models.LATENCY_BUCKET_EDGES_MS`, the open one last), interpolated
    inside the bucket that holds rank ⌈fraction·n⌉; ``None`` for no requests."""
    count = sum(histogram)
    if count == 0:
        return None
    rank = max(1, math.ceil(fraction * count))
    below = 0
    for index, in_bucket in enumerate(histogram):
        if in_bucket and below + in_bucket >= rank:
            if index == len(LATENCY_BUCKET_EDGES_MS):
                return float(LATENCY_BUCKET_EDGES_MS[-1])
            low = 0.0 if index == 0 else float(LATENCY_BUCKET_EDGES_MS[index - 1])
            high = float(LATENCY_BUCKET_EDGES_MS[index])
            return round(low + (high - low) * (rank - below) / in_bucket, 3)
        below += in_bucket
    raise AssertionError("unreachable: the ranks add up to the count")  # pragma: no cover
