"""Usage statistics from ``api_key_usage``: totals, by day, endpoint and status class, latency.

Everything is computed in the database with portable SQL, so SQLite and PostgreSQL agree;
percentiles use the nearest-rank method (the value at rank ⌈p·n⌉), read with an ordered
``LIMIT 1 OFFSET`` query.
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
from ..models import APIKeyUsage

#: Where statistics are read from: a session, or a connection of their own.
Reader = Session | sa.Connection
MONTH_PATTERN = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
usage = APIKeyUsage.__table__


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
        usage.c.organization_id == organization_id,
        usage.c.timestamp >= begin,
        usage.c.timestamp < finish,
    ]
    if api_key_id is not None:
        conditions.append(usage.c.api_key_id == api_key_id)
    where = sa.and_(*conditions)
    is_error = sa.case((usage.c.status_code >= 400, 1), else_=0)
    totals = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(is_error), 0),
            sa.func.coalesce(sa.func.sum(usage.c.tokens_used), 0),
            sa.func.coalesce(sa.func.sum(usage.c.cost_usd), 0),
            sa.func.avg(usage.c.response_time_ms),
        ).where(where)
    ).one()
    day = sa.func.date(usage.c.timestamp)
    by_day = session.execute(
        sa.select(day, sa.func.count(), sa.func.sum(is_error))
        .where(where)
        .group_by(day)
        .order_by(day)
    ).all()
    by_endpoint = session.execute(
        sa.select(
            usage.c.method,
            usage.c.endpoint,
            sa.func.count(),
            sa.func.sum(is_error),
            sa.func.avg(usage.c.response_time_ms),
        )
        .where(where)
        .group_by(usage.c.method, usage.c.endpoint)
        .order_by(sa.func.count().desc(), usage.c.endpoint)
    ).all()
    status_class = sa.cast(sa.func.floor(usage.c.status_code / 100.0), sa.Integer)
    by_status = session.execute(
        sa.select(status_class, sa.func.count()).where(where).group_by(status_class)
    ).all()
    error_codes = session.execute(
        sa.select(usage.c.error_code, sa.func.count())
        .where(where, usage.c.error_code.is_not(None))
        .group_by(usage.c.error_code)
        .order_by(sa.func.count().desc())
    ).all()
    count = int(totals[0])
    return {
        "start": begin.date().isoformat(),
        "end": finish.date().isoformat(),
        "total_requests": count,
        "errors": int(totals[1]),
        "tokens_used": int(totals[2]),
        "cost_usd": round(float(totals[3]), 6),
        "average_ms": None if totals[4] is None else round(float(totals[4]), 3),
        "p50_ms": _percentile(session, where, count, 0.50),
        "p95_ms": _percentile(session, where, count, 0.95),
        "by_day": [
            {"date": str(row[0])[:10], "requests": int(row[1]), "errors": int(row[2] or 0)}
            for row in by_day
        ],
        "by_endpoint": [
            {
                "method": row[0],
                "endpoint": row[1],
                "requests": int(row[2]),
                "errors": int(row[3] or 0),
                "average_ms": round(float(row[4]), 3),
            }
            for row in by_endpoint
        ],
        "by_status_class": {f"{int(row[0])}xx": int(row[1]) for row in sorted(by_status)},
        "error_codes": {row[0]: int(row[1]) for row in error_codes},
    }


def _percentile(session: Reader, where: Any, count: int, fraction: float) -> float | None:
    if count == 0:
        return None
    rank = max(1, math.ceil(fraction * count))
    value = session.execute(
        sa.select(usage.c.response_time_ms)
        .where(where)
        .order_by(usage.c.response_time_ms)
        .limit(1)
        .offset(rank - 1)
    ).scalar()
    return None if value is None else round(float(value), 3)
