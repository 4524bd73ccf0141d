"""Charts drawn on the server as SVG: no CDN, no JavaScript, nothing for the CSP to allow.

Each function takes the numbers of a usage report and returns the markup of one ``<svg>``
with a ``<title>`` and a text description (``role="img"``, ``aria-label``), so a screen reader
gets the numbers too. Colours come from CSS classes of the dashboard's stylesheet; every text
is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from markupsafe import Markup

#: Natural widths: a chart across the page, and one in half of it.
WIDTH = 1080
HALF_WIDTH = 500
BAR_HEIGHT = 22
BAR_GAP = 8
LABEL_WIDTH = 260
CHART_HEIGHT = 200
AXIS_SPACE = 28


@dataclass(frozen=True, slots=True)
class Bar:
    """One labelled value; ``part`` is drawn over it in the warning colour (e.g. errors)."""

    label: str
    value: float
    part: float = 0.0
    shown: str = ""


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _svg(width: int, height: int, label: str, body: list[Markup]) -> Markup:
    """The chart at its natural size (the stylesheet only ever shrinks it, so its text stays
    the size of the page's), described by ``label`` for screen readers."""
    return Markup(
        '<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="{label}" preserveAspectRatio="xMinYMin meet" '
        'xmlns="http://www.w3.org/2000/svg"><title>{label}</title>{body}</svg>'
    ).format(width=width, height=height, label=label, body=Markup("").join(body))


def _element(template: str, **values: object) -> Markup:
    """One SVG element; ``template`` is a constant of this module, every value is escaped."""
    # A constant of this module as the template, every value escaped by format().
    return Markup(template).format(**values)  # noqa: S704  # nosec B704


def horizontal_bars(
    title: str,
    bars: Sequence[Bar],
    unit: str = "",
    *,
    width: int = WIDTH,
    label_width: int = LABEL_WIDTH,
) -> Markup:
    """One row per bar, labelled on the left, with its value at the bar's end."""
    if not bars:
        return Markup('<p class="empty">No requests in this period.</p>')
    largest = max(bar.value for bar in bars) or 1.0
    room = width - label_width - 80
    label_characters = label_width // 7
    body = []
    for index, bar in enumerate(bars):
        top = index * (BAR_HEIGHT + BAR_GAP)
        length = max(1.0, room * bar.value / largest) if bar.value else 0.0
        part = room * bar.part / largest if bar.part else 0.0
        shown = bar.shown or _number(bar.value) + unit
        middle = top + BAR_HEIGHT / 2 + 5
        body.append(
            _element(
                '<text class="label" x="{x}" y="{y}" text-anchor="end">{label}</text>'
                '<rect class="bar" x="{left}" y="{top}" width="{width}" height="{height}" rx="3">'
                "<title>{full}: {shown}</title></rect>",
                x=label_width - 8,
                y=middle,
                label=_shorten(bar.label, label_characters),
                left=label_width,
                top=top,
                width=f"{length:.1f}",
                height=BAR_HEIGHT,
                full=bar.label,
                shown=shown,
            )
        )
        if part:
            body.append(
                _element(
                    '<rect class="bar-part" x="{left}" y="{top}" width="{width}" '
                    'height="{height}" rx="3"></rect>',
                    left=label_width,
                    top=top,
                    width=f"{part:.1f}",
                    height=BAR_HEIGHT,
                )
            )
        body.append(
            _element(
                '<text class="value" x="{x}" y="{y}">{shown}</text>',
                x=f"{label_width + length + 6:.1f}",
                y=middle,
                shown=shown,
            )
        )
    height = len(bars) * (BAR_HEIGHT + BAR_GAP)
    summary = f"{title}: " + ", ".join(
        f"{bar.label} {bar.shown or _number(bar.value) + unit}" for bar in bars
    )
    return _svg(width, height, summary, body)


def daily_bars(
    title: str,
    start: date,
    end: date,
    days: Sequence[dict[str, object]],
    *,
    width: int = WIDTH,
) -> Markup:
    """Requests per day from ``start`` up to ``end`` (excluded), errors drawn over them; days
    without requests are drawn as zero, so gaps show."""
    by_date = {str(day["date"]): day for day in days}
    count = max(1, (end - start).days)
    dates = [start + timedelta(days=offset) for offset in range(count)]
    values = [_as_int(by_date.get(day.isoformat(), {}).get("requests")) for day in dates]
    errors = [_as_int(by_date.get(day.isoformat(), {}).get("errors")) for day in dates]
    largest = max(values) or 1
    plot_left, plot_width = 56, width - 64
    slot = plot_width / count
    bar_width = max(1.0, slot * 0.75)
    body = [
        _element(
            '<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"></line>'
            '<text class="label" x="{x}" y="14" text-anchor="end">{largest}</text>'
            '<text class="label" x="{x}" y="{bottom}" text-anchor="end">0</text>',
            left=plot_left,
            right=width - 8,
            bottom=CHART_HEIGHT,
            x=plot_left - 6,
            largest=_number(largest),
        )
    ]
    for index, (day, value, failed) in enumerate(zip(dates, values, errors, strict=True)):
        left = plot_left + index * slot + (slot - bar_width) / 2
        height = CHART_HEIGHT * value / largest
        error_height = CHART_HEIGHT * failed / largest
        body.append(
            _element(
                '<rect class="bar" x="{x}" y="{y}" width="{width}" height="{height}">'
                "<title>{day}: {value} requests, {failed} errors</title></rect>",
                x=f"{left:.1f}",
                y=f"{CHART_HEIGHT - height:.1f}",
                width=f"{bar_width:.1f}",
                height=f"{height:.1f}",
                day=day.isoformat(),
                value=f"{value:,}",
                failed=f"{failed:,}",
            )
        )
        if failed:
            body.append(
                _element(
                    '<rect class="bar-part" x="{x}" y="{y}" width="{width}" '
                    'height="{height}"></rect>',
                    x=f"{left:.1f}",
                    y=f"{CHART_HEIGHT - error_height:.1f}",
                    width=f"{bar_width:.1f}",
                    height=f"{error_height:.1f}",
                )
            )
    # First, middle and last day; the outer ones aligned inwards so that they are not cut off.
    for index, anchor in sorted({0: "start", count // 2: "middle", count - 1: "end"}.items()):
        middle = plot_left + index * slot + slot / 2
        x = {"start": middle - slot / 2, "middle": middle, "end": middle + slot / 2}[anchor]
        body.append(
            _element(
                '<text class="label" x="{x}" y="{y}" text-anchor="{anchor}">{day}</text>',
                x=f"{x:.1f}",
                y=CHART_HEIGHT + 20,
                anchor=anchor,
                day=dates[index].strftime("%b %d"),
            )
        )
    total = sum(values)
    summary = (
        f"{title}: {total:,} requests from {start.isoformat()} to "
        f"{dates[-1].isoformat()}, at most {_number(largest)} in a day"
    )
    return _svg(width, CHART_HEIGHT + AXIS_SPACE, summary, body)


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def usage_charts(stats: dict[str, Any], start: date, end: date) -> dict[str, Markup]:
    """Every chart of the usage page, from one usage report (``UsageReports.usage_stats``)."""
    endpoints = [
        Bar(f"{row['method']} {row['endpoint']}", row["requests"], row["errors"])
        for row in stats["by_endpoint"][:10]
    ]
    statuses = [
        Bar(name, count, count if name in ("4xx", "5xx") else 0)
        for name, count in sorted(stats["by_status_class"].items())
    ]
    latency = [
        Bar(name, value, shown=f"{value:,.1f} ms")
        for name, value in (
            ("average", stats["average_ms"]),
            ("p50", stats["p50_ms"]),
            ("p95", stats["p95_ms"]),
        )
        if value is not None
    ]
    return {
        "by_day": daily_bars("Requests per day", start, end, stats["by_day"]),
        "by_endpoint": horizontal_bars(
            "Requests by endpoint", endpoints, width=HALF_WIDTH, label_width=210
        ),
        "by_status": horizontal_bars(
            "Requests by status class", statuses, width=HALF_WIDTH, label_width=60
        ),
        "latency": horizontal_bars("Response time", latency, label_width=90),
    }
