"""Retention: pruning raw rows and rollups in batches, by the CLI and by the writer, and purging
long-revoked and expired keys without breaking the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from flask_apikeys import APIKeys
from flask_apikeys.cli_maintenance import parse_moment
from flask_apikeys.models import APIKey, APIKeyUsage, APIKeyUsageRollup, AuditRecord
from flask_apikeys.usage.retention import WriterPruning

usage = APIKeyUsage.__table__
rollups = APIKeyUsageRollup.__table__
NOW = datetime(2026, 6, 15, 12, 30, tzinfo=UTC)


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["apikeys", *args])


def count(app: Flask, table: sa.Table, *conditions: Any) -> int:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return int(session.scalar(sa.select(sa.func.count()).select_from(table).where(*conditions)))


def queue_requests(app: Flask, key: str, days_ago: list[int]) -> None:
    """Usage rows of ``key`` that many days before now, through the writer (rollups too)."""
    with app.app_context():
        verified = app.extensions["apikeys"].extension.verify_key(key)
    writer = app.extensions["apikeys"].writer
    now = datetime.now(UTC).timestamp()
    for days in days_ago:
        writer.add_usage(
            (verified.id, verified.organization.id, now - days * 86400, "/v1/whoami", "GET",
             200, 12.5, None, None, "127.0.0.1", None, None, None)
        )  # fmt: skip
    with app.app_context():
        app.extensions["apikeys"].extension.flush_usage()


def test_prune_deletes_old_raw_rows_and_rollups_in_batches(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    key = make_key()
    queue_requests(app, key, [40] * 5 + [10] * 7 + [1] * 3)
    assert count(app, usage) == 15
    result = invoke(app, "usage", "prune", "--raw-days", "5", "--rollup-days", "30",
                    "--batch-size", "2", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["raw_rows_deleted"] == 12 and count(app, usage) == 3
    # The rollups of 40 days ago (an hour and a day row, for the key and for every key) went.
    assert report["rollup_rows_deleted"] == 4
    with app.app_context():
        today = datetime.now(UTC).date()
        stats = apikeys.usage_stats(
            apikeys.verify_key(key).organization.id,
            start=today - timedelta(days=60),
            end=today + timedelta(days=1),
        )
    assert stats["total_requests"] == 10  # the statistics outlive the raw rows
    again = json.loads(invoke(app, "usage", "prune", "--raw-days", "5", "--json").output)
    assert again["raw_rows_deleted"] == 0 and again["rollups_before"] is None


def test_prune_without_a_retention_keeps_everything(
    app: Flask, make_key: Callable[..., str]
) -> None:
    queue_requests(app, make_key(), [400, 1])
    result = invoke(app, "usage", "prune", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["raw_rows_deleted"] == 0 and count(app, usage) == 2


@pytest.mark.parametrize(
    "arguments", [["--raw-days", "0"], ["--raw-days", "x"], ["--batch-size", "0"]]
)
def test_prune_refuses_bad_options(app: Flask, arguments: list[str]) -> None:
    result = invoke(app, "usage", "prune", *arguments)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_the_writer_prunes_a_batch_after_a_flush_when_configured(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(
        APIKEYS_USAGE_RETENTION_DAYS=7,
        APIKEYS_USAGE_ROLLUP_RETENTION_DAYS=30,
        APIKEYS_USAGE_PRUNE_IN_WRITER=True,
    )
    writer = app.extensions["apikeys"].writer
    assert isinstance(writer.after_flush, WriterPruning)
    apikeys: APIKeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="Old", email="ops@old.test").id
        key = apikeys.create_key(organization, "k").key
    queue_requests(app, key, [9, 9, 1])  # the flush itself prunes the two old raw rows
    assert count(app, usage) == 1
    # 2 days × (hour, day) × (the key, every key): rollups are kept 30 days
    assert count(app, rollups) == 8


def test_usage_command_without_org_or_subcommand_says_what_to_give(app: Flask) -> None:
    result = invoke(app, "usage")
    assert result.exit_code == 1 and "--org" in result.output


def make_old_keys(app: Flask, apikeys: APIKeys, make_key: Callable[..., str]) -> dict[str, Any]:
    """A key revoked 100 days ago, one expired 100 days ago, one revoked yesterday, one live."""
    keys = {name: make_key() for name in ("revoked", "expired", "recent", "live")}
    for key in keys.values():
        queue_requests(app, key, [120, 1])
    with app.app_context():
        ids = {name: apikeys.verify_key(key).id for name, key in keys.items()}
        apikeys.revoke_key(ids["revoked"], reason="leaked", revoked_by="ops")
        apikeys.revoke_key(ids["recent"], reason="rotated", revoked_by="ops")
        session = app.extensions["sqlalchemy"].session
        long_ago = datetime.now(UTC) - timedelta(days=100)
        session.execute(
            sa.update(APIKey).where(APIKey.id == ids["revoked"]).values(revoked_at=long_ago)
        )
        session.execute(
            sa.update(APIKey).where(APIKey.id == ids["expired"]).values(expires_at=long_ago)
        )
        session.commit()
    return ids


def test_purge_deletes_old_keys_and_their_raw_rows_and_keeps_rollups_and_audit(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str]
) -> None:
    ids = make_old_keys(app, apikeys, make_key)
    rollups_before = count(app, rollups)
    dry = invoke(app, "key", "purge", "--revoked-before", "30d", "--expired-before", "30d",
                 "--dry-run", "--json")  # fmt: skip
    assert dry.exit_code == 0, dry.output
    listed = {key["id"] for key in json.loads(dry.output)["purged"]}
    assert listed == {str(ids["revoked"]), str(ids["expired"])}
    assert count(app, APIKey.__table__) == 4  # a dry run deletes nothing
    result = invoke(app, "key", "purge", "--revoked-before", "30d", "--expired-before", "30d")
    assert result.exit_code == 0, result.output
    assert "Purged 2 keys." in result.output
    remaining = {row for row in sa_ids(app)}
    assert remaining == {ids["recent"], ids["live"]}
    gone = [ids["revoked"], ids["expired"]]
    assert count(app, usage, usage.c.api_key_id.in_(gone)) == 0
    assert count(app, rollups) == rollups_before  # the organization's history stays
    with app.app_context():
        assert apikeys.flush_usage() == 0
        assert apikeys.verify_audit() is None  # the chain is whole
        session = app.extensions["sqlalchemy"].session
        purged = set(
            session.scalars(
                sa.select(AuditRecord.api_key_id).where(AuditRecord.event == "key.purged")
            )
        )
    assert purged == set(gone)
    again = invoke(app, "key", "purge", "--revoked-before", "30d", "--json")
    assert json.loads(again.output)["purged"] == []


def sa_ids(app: Flask) -> list[Any]:
    with app.app_context():
        return list(app.extensions["sqlalchemy"].session.scalars(sa.select(APIKey.id)))


@pytest.mark.parametrize(
    "arguments",
    [[], ["--revoked-before", "tomorrow"], ["--expired-before", "2026-13-01"],
     ["--revoked-before", "2026-01-01T10:00"], ["--revoked-before", "99999d"]],
)  # fmt: skip
def test_purge_refuses_what_it_cannot_read_and_deletes_nothing(
    app: Flask, apikeys: APIKeys, make_key: Callable[..., str], arguments: list[str]
) -> None:
    make_old_keys(app, apikeys, make_key)
    result = invoke(app, "key", "purge", *arguments)
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    assert count(app, APIKey.__table__) == 4


def test_purge_refuses_a_moment_in_the_future(app: Flask) -> None:
    later = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    result = invoke(app, "key", "purge", "--revoked-before", later)
    assert result.exit_code == 1 and "future" in result.output


@given(st.dates(min_value=date(1970, 1, 1), max_value=date(9999, 12, 31)))
def test_a_date_means_its_utc_midnight(day: date) -> None:
    assert parse_moment(day.isoformat(), NOW) == datetime(day.year, day.month, day.day, tzinfo=UTC)


@given(st.integers(min_value=0, max_value=36_500))
def test_days_ago_count_back_from_now(days: int) -> None:
    assert parse_moment(f"{days}d", NOW) == NOW - timedelta(days=days)


@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_a_time_with_its_offset_is_that_moment(moment: datetime, offset_minutes: int) -> None:
    from datetime import timezone

    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert parse_moment(aware.isoformat(), NOW) == aware


@given(st.text(max_size=40))
def test_any_text_is_a_moment_or_a_clear_refusal(text: str) -> None:
    try:
        moment = parse_moment(text, NOW)
    except ValueError as error:
        assert str(error)
    else:
        assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
