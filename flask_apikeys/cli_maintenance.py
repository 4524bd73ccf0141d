"""``flask apikeys usage prune | backfill-rollups`` and ``flask apikeys key purge``.

Keeping the database's size in check from the terminal, as thin as the other commands: parse,
call the service (:mod:`flask_apikeys.service.retention`), print. Registered on the groups of
:mod:`flask_apikeys.cli` when the extension is imported.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from .cli import actor, emit, key_group, print_record, print_table, reports_errors, service
from .cli import usage as usage_group

#: ``90d``: that many days before now.
DAYS_AGO = re.compile(r"([0-9]{1,5})d")


def parse_moment(text: str, now: datetime) -> datetime:
    """A moment given on the command line, as an aware UTC datetime: ``YYYY-MM-DD`` (its UTC
    midnight), an ISO 8601 time with its offset (``2026-01-31T12:00:00+01:00``), or ``<N>d``
    (N days before ``now``). Raises ``ValueError`` saying what it takes."""
    text = text.strip()
    match = DAYS_AGO.fullmatch(text)
    if match is not None:
        days = int(match[1])
        if days > 36_500:
            raise ValueError("at most 36500d")
        return now - timedelta(days=days)
    problem = "a date (2026-01-31), a time with its offset (2026-01-31T12:00+00:00) or 90d"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(problem) from None
    if len(text) == 10:  # a date alone: its UTC midnight
        return moment.replace(tzinfo=UTC)
    if moment.tzinfo is None:
        raise ValueError(problem)
    return moment.astimezone(UTC)


def moment_option(
    context: click.Context, parameter: click.Parameter, value: str | None
) -> datetime | None:
    """:func:`parse_moment` of an option's text (a click callback: a usage error if bad)."""
    if value is None:
        return None
    try:
        return parse_moment(value, datetime.now(UTC))
    except ValueError as error:
        raise click.BadParameter(f"{value!r}: {error}", context, parameter) from None


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
batch_option = click.option(
    "--batch-size",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="Rows deleted per transaction.",
)


@usage_group.command("prune")
@click.option(
    "--raw-days",
    type=click.IntRange(1, 36_500),
    help="Keep raw rows this many days (default: APIKEYS_USAGE_RETENTION_DAYS).",
)
@click.option(
    "--rollup-days",
    type=click.IntRange(1, 36_500),
    help="Keep rollups this many days (default: APIKEYS_USAGE_ROLLUP_RETENTION_DAYS).",
)
@batch_option
@click.option(
    "--pause",
    type=click.FloatRange(0, 60),
    default=0.0,
    help="Seconds to wait between two batches (lets a busy writer in).",
)
@json_option
@reports_errors
def prune_usage(
    raw_days: int | None, rollup_days: int | None, batch_size: int, pause: float, as_json: bool
) -> None:
    """Delete raw usage rows and rollups older than their retention, in short batches.

    Without a setting or an option, that kind of row is kept.
    """
    report = service().retention.prune_usage(
        raw_days=raw_days, rollup_days=rollup_days, batch_size=batch_size, pause=pause
    )
    document = {
        "raw_before": _iso(report.raw_before),
        "rollups_before": _iso(report.rollups_before),
        "raw_rows_deleted": report.raw_rows_deleted,
        "rollup_rows_deleted": report.rollup_rows_deleted,
    }
    emit(document, as_json, lambda: print_record(document))


@usage_group.command("backfill-rollups")
@click.option("--since", callback=moment_option, help="From this day (default: the first raw row).")
@click.option("--until", callback=moment_option, help="Up to this hour (default: the current one).")
@json_option
@reports_errors
def backfill_rollups(since: datetime | None, until: datetime | None, as_json: bool) -> None:
    """Add raw usage rows written before the rollups existed to the rollups.

    Rebuilds each hour whose raw rows outnumber its rollups, one UTC day per transaction; run
    it again at will: whole hours are left alone. It stops at the current hour, which the
    writer still adds to: ``rows_left`` counts the raw rows from there on; run it again once
    that hour is over to add those the old code wrote.
    """
    report = service().retention.backfill_rollups(since=since, until=until)
    document = {
        "hours_checked": report.hours_checked,
        "hours_rebuilt": report.hours_rebuilt,
        "rows_counted": report.rows_counted,
        "rows_left": report.rows_left,
    }
    emit(document, as_json, lambda: print_record(document))


@key_group.command("purge")
@click.option(
    "--revoked-before", callback=moment_option, help="Keys revoked before: a date, a time or 90d."
)
@click.option(
    "--expired-before", callback=moment_option, help="Keys expired before: a date, a time or 90d."
)
@click.option("--dry-run", is_flag=True, help="List the keys, delete nothing.")
@json_option
@reports_errors
def purge_keys(
    revoked_before: datetime | None, expired_before: datetime | None, dry_run: bool, as_json: bool
) -> None:
    """Delete long-revoked and expired keys and their raw usage rows.

    Their rollups stay (the organization's history), and so does the audit trail, which
    records each purge.
    """
    purged = service().retention.purge_keys(
        revoked_before=revoked_before,
        expired_before=expired_before,
        dry_run=dry_run,
        actor=actor(),
    )
    listed = [
        {**key, "revoked_at": _iso(key["revoked_at"]), "expires_at": _iso(key["expires_at"])}
        for key in purged
    ]
    document = {"dry_run": dry_run, "purged": listed}

    def show() -> None:
        verb = "Would purge" if dry_run else "Purged"
        click.echo(f"{verb} {len(purged)} keys.")
        if purged:
            print_table(listed, ("id", "key_prefix", "revoked_at", "expires_at"))

    emit(document, as_json, show)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
