"""``flask apikeys …`` through Flask's CLI runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_apikeys.models import APIKey, Organization


@pytest.fixture
def database_url(backend_url: str) -> str:
    return backend_url


def invoke(runner: Any, *args: str) -> Any:
    return runner.invoke(args=["apikeys", *args])


def ok(runner: Any, *args: str) -> Any:
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def refused(runner: Any, *args: str) -> str:
    result = invoke(runner, *args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def count(app: Flask, model: type) -> int:
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_org_create_list_show_update(runner: Any) -> None:
    created = ok(
        runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro", "--json"
    )
    assert (created["slug"], created["plan"], created["max_api_keys"]) == ("acme", "pro", None)
    assert created["limits"] == {
        "requests_per_minute": 60,
        "monthly_requests": 100_000,
        "max_keys": 10,
    }
    listing = ok(runner, "org", "list", "--json")
    assert listing["total"] == 1 and listing["items"][0]["id"] == created["id"]
    table = ok(runner, "org", "list")
    assert table.splitlines()[0].split()[:3] == ["SLUG", "NAME", "EMAIL"] and "acme" in table
    shown = ok(runner, "org", "show", "--slug", "acme", "--json")
    assert shown == created
    updated = ok(
        runner,
        "org",
        "update",
        "--slug",
        "acme",
        "--plan",
        "enterprise",
        "--inactive",
        "--rate-limit-per-minute",
        "5",
        "--json",
    )
    assert (updated["plan"], updated["is_active"], updated["rate_limit_per_minute"]) == (
        "enterprise",
        False,
        5,
    )
    assert "is_active" in ok(runner, "org", "show", "--slug", "acme")


def test_key_create_json_has_the_promised_fields_and_the_key_works(app: Flask, runner: Any) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro")
    document = ok(
        runner,
        "key",
        "create",
        "--org",
        "acme",
        "--name",
        "Prod Key",
        "--env",
        "test",
        "--scopes",
        "presentations:read,outline:*",
        "--expires-in-days",
        "30",
        "--rate-limit",
        "5/minute",
        "--json",
    )
    assert {
        "id",
        "key",
        "prefix",
        "hint",
        "name",
        "environment",
        "scopes",
        "expires_at",
        "organization_id",
    } <= set(document)
    shown = ok(runner, "org", "show", "--slug", "acme", "--json")
    assert document["key"].startswith("pk_test_") and document["organization_id"] == shown["id"]
    assert document["scopes"] == ["outline:*", "presentations:read"]
    response = app.test_client().get("/v1/presentations", headers={"X-API-Key": document["key"]})
    assert response.status_code == 200


def test_the_key_is_printed_only_by_create_rotate_and_seed(runner: Any) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro")
    output = ok(runner, "key", "create", "--org", "acme", "--name", "k")
    key = next(word for word in output.split() if word.startswith("pk_live_"))
    assert "shown once" in output
    listing = ok(runner, "key", "list", "--org", "acme", "--json")
    key_id = listing["items"][0]["id"]
    for output in (
        ok(runner, "key", "list", "--org", "acme"),
        json.dumps(listing),
        ok(runner, "key", "revoke", "--key", key_id, "--reason", "test"),
    ):
        assert key not in output and "key_hash" not in output and "$" not in output


def test_key_list_update_revoke_rotate(runner: Any) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro")
    first = ok(runner, "key", "create", "--org", "acme", "--name", "one", "--json")
    rotated = ok(runner, "key", "rotate", "--key", first["id"], "--overlap-hours", "1", "--json")
    assert rotated["key"] != first["key"] and rotated["replaces"] == first["id"]
    updated = ok(
        runner,
        "key",
        "update",
        "--key",
        rotated["id"],
        "--scopes",
        "a:read",
        "--level",
        "read-only",
        "--json",
    )
    assert (updated["scopes"], updated["level"]) == (["a:read"], "read-only")
    revoked = ok(
        runner,
        "key",
        "revoke",
        "--key",
        rotated["id"],
        "--reason",
        "Compromised",
        "--by",
        "ops@acme.io",
        "--json",
    )
    assert (revoked["revoked_reason"], revoked["revoked_by"]) == ("Compromised", "ops@acme.io")
    active = ok(runner, "key", "list", "--org", "acme", "--active-only", "--json")
    assert [item["id"] for item in active["items"]] == [first["id"]]  # in its overlap window
    assert ok(runner, "key", "list", "--org", "acme", "--json")["total"] == 2


def test_seed_twice_makes_one_organization_and_one_key(app: Flask, runner: Any) -> None:
    first = ok(runner, "seed", "--json")
    organization = ok(runner, "org", "show", "--slug", "default", "--json")
    assert first["organization_id"] == organization["id"] and first["name"] == "Default Test Key"
    assert first["scopes"] == ["*"] and first["environment"] == "test"
    second = ok(runner, "seed", "--json")
    assert second["key"] is None and second["id"] == first["id"]
    assert second["organization_id"] == organization["id"]
    assert f"flask apikeys key rotate --key {first['id']}" in second["message"]
    assert f"--key {first['id']}" in ok(runner, "seed")
    assert count(app, Organization) == 1 and count(app, APIKey) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("org", "show", "--slug", "nobody"), "No organization"),
        (("org", "create", "--name", "X", "--email", "not-an-email"), "email"),
        (("org", "create", "--name", "X", "--email", "x@y.io", "--plan", "gold"), "plan"),
        (("org", "update", "--slug", "acme", "--plan", "gold"), "plan"),
        (("key", "create", "--org", "nobody", "--name", "k"), "No organization"),
        (("key", "create", "--org", "acme", "--name", "k", "--rate-limit", "lots"), "rate_limit"),
        (("key", "create", "--org", "acme", "--name", "k", "--scopes", "bad scope"), "scopes"),
        (("key", "create", "--org", "acme", "--name", "k", "--role", "wizard"), "roles"),
        (("key", "revoke", "--key", "not-an-id", "--reason", "x"), "No API key"),
        (("key", "rotate", "--key", "00000000-0000-0000-0000-000000000000"), "No API key"),
        (("key", "list", "--org", "nobody"), "No organization"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_nothing_is_written(
    app: Flask, runner: Any, args: tuple[str, ...], message: str
) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "free")
    before = (count(app, Organization), count(app, APIKey))
    assert message in refused(runner, *args)
    assert (count(app, Organization), count(app, APIKey)) == before


def test_past_the_plans_key_limit_is_refused(app: Flask, runner: Any) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "free")
    for name in ("one", "two"):
        ok(runner, "key", "create", "--org", "acme", "--name", name)
    assert "allows 2" in refused(runner, "key", "create", "--org", "acme", "--name", "three")
    assert count(app, APIKey) == 2


def test_revoking_twice_is_refused(runner: Any) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io")
    key_id = ok(runner, "key", "create", "--org", "acme", "--name", "k", "--json")["id"]
    ok(runner, "key", "revoke", "--key", key_id, "--reason", "first")
    assert "final" in refused(runner, "key", "revoke", "--key", key_id, "--reason", "again")


def test_every_command_explains_itself(runner: Any) -> None:
    for command in (
        (),
        ("org",),
        ("org", "create"),
        ("org", "list"),
        ("org", "show"),
        ("org", "update"),
        ("key",),
        ("key", "create"),
        ("key", "list"),
        ("key", "update"),
        ("key", "revoke"),
        ("key", "rotate"),
        ("seed",),
        ("install-migrations",),
    ):
        output = ok(runner, *command, "--help")
        assert "Usage:" in output and len(output.splitlines()) > 3


def test_install_migrations_copies_once_and_refuses_a_missing_folder(
    runner: Any, tmp_path: Path
) -> None:
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "migrations" / "script.py.mako").write_text("")
    output = ok(runner, "install-migrations", "--directory", str(tmp_path / "migrations"))
    assert "0001_apikeys_initial.py" in output and "flask db upgrade" in output
    again = ok(runner, "install-migrations", "--directory", str(tmp_path / "migrations"))
    assert "Already up to date" in again
    assert "flask db init" in refused(runner, "install-migrations", "--directory", str(tmp_path))


def test_usage_for_a_month_and_for_a_range(app: Flask, runner: Any) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro")
    key = ok(runner, "key", "create", "--org", "acme", "--name", "k", "--json")["key"]
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    month = today.strftime("%Y-%m")
    stats = ok(runner, "usage", "--org", "acme", "--month", month, "--json")
    assert (stats["start"], stats["total_requests"]) == (f"{month}-01", 3)
    assert stats["by_endpoint"][0]["endpoint"] == "/v1/whoami"
    table = ok(runner, "usage", "--org", "acme", "--month", month)
    assert "total_requests" in table and "/v1/whoami" in table
    ranged = ok(
        runner,
        "usage",
        "--org",
        "acme",
        "--start",
        today.isoformat(),
        "--end",
        (today + timedelta(days=1)).isoformat(),
        "--json",
    )
    assert ranged["total_requests"] == 3
    assert "month" in refused(runner, "usage", "--org", "acme", "--month", "2026-13")
    assert "--start" in refused(runner, "usage", "--org", "acme", "--start", today.isoformat())
    assert "No organization" in refused(runner, "usage", "--org", "nobody", "--month", month)


def test_audit_verify_reports_intact_then_the_first_tampered_record(
    app: Flask, runner: Any
) -> None:
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro")
    ok(runner, "key", "create", "--org", "acme", "--name", "k")
    assert "intact" in ok(runner, "audit", "verify")
    assert ok(runner, "audit", "verify", "--json")["intact"] is True
    from flask_apikeys.models import AuditRecord

    table = AuditRecord.__table__
    with app.app_context():
        session = app.extensions["sqlalchemy"].session
        first = session.scalar(sa.select(sa.func.min(table.c.id)))
        session.execute(sa.update(table).where(table.c.id == first).values(actor="mallory"))
        session.commit()
    message = refused(runner, "audit", "verify")
    assert f"record {first}" in message and "changed" in message


def test_usage_without_a_period_reports_the_current_month_in_utc(app: Flask, runner: Any) -> None:
    from datetime import UTC, datetime

    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro")
    key = ok(runner, "key", "create", "--org", "acme", "--name", "k", "--json")["key"]
    client = app.test_client()
    for _ in range(2):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    stats = ok(runner, "usage", "--org", "acme", "--json")
    assert stats["start"] == datetime.now(UTC).strftime("%Y-%m-01")
    assert stats["total_requests"] == 2


ADMIN_KEY = "bootstrap-" + "c" * 32


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"APIKEYS_ADMIN_KEY": ADMIN_KEY, "APIKEYS_USAGE_MODE": "sync"}


def test_json_records_are_the_admin_apis_records(app: Flask, runner: Any) -> None:
    """One representation of each record: ``--json`` prints what the admin API answers."""
    admin = app.test_client()
    headers = {"X-API-Key": ADMIN_KEY}
    organization = ok(
        runner, "org", "create", "--name", "Acme", "--email", "a@acme.io", "--plan", "pro", "--json"
    )
    updated = ok(
        runner, "org", "update", "--slug", "acme", "--rate-limit-per-minute", "5", "--json"
    )
    org_path = f"/admin/organizations/{organization['id']}"
    from_api = admin.get(org_path, headers=headers).json
    assert updated["plan_excess"] == {}  # as the admin API says after a change of limits
    assert {**updated, "updated_at": None} == {
        **admin.put(org_path, json={"rate_limit_per_minute": 5}, headers=headers).json,
        "updated_at": None,
    }
    assert from_api == {name: value for name, value in updated.items() if name != "plan_excess"}
    assert updated["rate_limit_per_minute"] == 5 and updated["limits"]["requests_per_minute"] == 5
    created = ok(
        runner, "key", "create", "--org", "acme", "--name", "k", "--scopes", "a:read", "--json"
    )
    key_path = f"{org_path}/keys/{created['id']}"
    key_from_api = admin.get(key_path, headers=headers).json
    assert {name: value for name, value in created.items() if name != "key"} == {
        **key_from_api,
        "last_used_at": None,
        "last_request_at": None,
        "total_requests": 0,
    }
    listing = ok(runner, "key", "list", "--org", "acme", "--json")
    assert listing["items"] == admin.get(f"{org_path}/keys", headers=headers).json["items"]
    assert (
        ok(runner, "org", "list", "--json")["items"]
        == admin.get("/admin/organizations", headers=headers).json["items"]
    )
    usage = ok(runner, "usage", "--org", "acme", "--json")
    assert usage == admin.get(f"{org_path}/usage", headers=headers).json


def test_choices_come_from_the_constants(runner: Any) -> None:
    from flask_apikeys.keys import ENVIRONMENTS
    from flask_apikeys.permissions import LEVELS

    help_text = " ".join(ok(runner, "key", "create", "--help").split())
    assert "[" + "|".join(ENVIRONMENTS) + "]" in help_text
    assert "[" + "|".join(LEVELS) + "]" in help_text


def test_a_key_given_where_an_id_or_slug_belongs_is_never_echoed(app: Flask, runner: Any) -> None:
    """An operator who pastes the key itself instead of its id gets a one-line error that
    does not print the key back (terminals, CI logs and shell history keep what is printed)."""
    ok(runner, "org", "create", "--name", "Acme", "--email", "a@acme.io")
    key = ok(runner, "key", "create", "--org", "acme", "--name", "k", "--json")["key"]
    for args in (
        ("key", "revoke", "--key", key, "--reason", "oops"),
        ("key", "rotate", "--key", key),
        ("key", "update", "--key", key, "--name", "renamed"),
        ("usage", "--org", "acme", "--key", key),
        ("org", "show", "--slug", key),
        ("key", "list", "--org", key),
    ):
        line = refused(runner, *args)
        assert key not in line and key[12:] not in line, args
    # The admin API's 404s do not echo it either (problem details end up in clients' logs).
    admin = app.test_client()
    organization = ok(runner, "org", "show", "--slug", "acme", "--json")["id"]
    for path in (f"/organizations/{key}", f"/organizations/{organization}/keys/{key}"):
        response = admin.get("/admin" + path, headers={"X-API-Key": ADMIN_KEY})
        assert response.status_code == 404
        assert key[12:] not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("options", "named", "not_named"),
    [
        (["--limit", "0"], "limit: 1 to 500", "offset"),
        (["--offset", "-1"], "offset: 0 to", "limit"),
    ],
)
def test_a_bad_page_names_only_the_option_at_fault(
    runner: Any, organization: Any, options: list[str], named: str, not_named: str
) -> None:
    result = runner.invoke(args=["apikeys", "key", "list", "--org", str(organization), *options])
    assert result.exit_code == 1
    assert named in result.stderr
    assert not_named not in result.stderr
