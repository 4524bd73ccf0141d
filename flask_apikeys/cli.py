"""``flask apikeys …``: organizations, keys, usage and seeding from the terminal.

Thin by design: each command parses its options, calls the service layer (the same one the
admin API uses) and prints the record as the admin API answers it (its schemas in
:mod:`flask_apikeys.admin.schemas`): as one JSON document with ``--json``, else as a table.
Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from flask.cli import AppGroup, with_appcontext

from .admin import schemas
from .errors import APIKeyError, InvalidInput
from .keys import ENVIRONMENTS
from .logmask import mask_secrets
from .migrations import install_revisions
from .models import Organization
from .permissions import LEVELS
from .service import DEFAULT_KEY_NAME, CreatedKey, KeyService
from .service.organizations import PLAN_FIELDS
from .state import get_state
from .usage.stats import current_month, month_bounds

Command = TypeVar("Command", bound=Callable[..., Any])
apikeys_cli = AppGroup("apikeys", help="Manage API keys, organizations and usage.")
organization_group = AppGroup("org", help="Create, list, show and update organizations.")
key_group = AppGroup("key", help="Create, list, update, revoke and rotate API keys.")
apikeys_cli.add_command(organization_group)
apikeys_cli.add_command(key_group)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def service() -> KeyService:
    return get_state().service


def actor() -> str:
    """Who the audit trail says did it: the operator's login, marked as coming from the CLI."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def reports_errors(command: Command) -> Command:
    """Turn the service's errors into one line on stderr and exit code 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InvalidInput as error:
            fields = "; ".join(
                f"{field}: {' '.join(map(str, messages))}"
                for field, messages in error.errors.items()
            )
            fail(f"{error.detail}{': ' + fields if fields else ''}")
        except APIKeyError as error:
            fail(error.detail)

    return run  # type: ignore[return-value]


def fail(message: str) -> None:
    click.echo(f"Error: {mask_secrets(message)}", err=True)  # never a key pasted by mistake
    sys.exit(1)


def organization_document(organization: Organization) -> dict[str, Any]:
    return schemas.organization_document(
        organization, service().organizations.plan_of(organization)
    )


def created_document(created: CreatedKey, replaces: str | None = None) -> dict[str, Any]:
    return schemas.created_key_document(created.api_key, created.key, replaces=replaces)


def shown(value: Any) -> str:
    """One value in a terminal: lists joined with commas, mappings as ``name=value``, nothing
    as '-'."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{name}={shown(item)}" for name, item in value.items())
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Aligned columns with a header."""
    cells = [[shown(row.get(column)) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)
    ]
    header = [column.upper() for column in columns]
    for line in [header, *cells]:
        padded = (value.ljust(width) for value, width in zip(line, widths, strict=True))
        click.echo("  ".join(padded).rstrip())


def print_record(record: dict[str, Any]) -> None:
    width = max(map(len, record))
    for field, value in record.items():
        click.echo(f"{field.ljust(width)}  {shown(value)}")


def emit(document: Any, as_json: bool, show: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, default=str))
    else:
        show()


def show_new_key(document: dict[str, Any], as_json: bool) -> None:
    def show() -> None:
        click.echo(f"API key (shown once, store it now): {document['key']}")
        print_record({field: value for field, value in document.items() if field != "key"})

    emit(document, as_json, show)


def split(values: str | None) -> list[str] | None:
    return None if values is None else [part.strip() for part in values.split(",") if part.strip()]


# -- organizations -------------------------------------------------------------------------------

ORGANIZATION_COLUMNS = ("slug", "name", "email", "plan", "is_active", "id")


@organization_group.command("create")
@click.option("--name", required=True, help="Display name, e.g. 'Acme'.")
@click.option("--email", required=True, help="Contact address of the organization's admin.")
@click.option("--plan", default="free", show_default=True, help="A plan from APIKEYS_PLANS.")
@click.option("--slug", help="URL-safe identifier; derived from the name when omitted.")
@json_option
@reports_errors
def create_organization(name: str, email: str, plan: str, slug: str | None, as_json: bool) -> None:
    """Create an organization (a tenant that owns keys)."""
    organization = service().organizations.create_organization(
        name, email, plan, slug=slug, actor=actor()
    )
    document = organization_document(organization)
    emit(document, as_json, lambda: print_record(document))


@organization_group.command("list")
@click.option("--limit", default=100, show_default=True, help="At most this many.")
@click.option("--offset", default=0, show_default=True, help="Skip this many first.")
@json_option
@reports_errors
def list_organizations(limit: int, offset: int, as_json: bool) -> None:
    """List organizations, oldest first."""
    organizations, total = service().organizations.list_organizations(limit=limit, offset=offset)
    documents = [organization_document(organization) for organization in organizations]
    emit(
        {"items": documents, "total": total, "limit": limit, "offset": offset},
        as_json,
        lambda: print_table(documents, ORGANIZATION_COLUMNS),
    )


@organization_group.command("show")
@click.option("--slug", "reference", required=True, help="The organization's slug (or id).")
@json_option
@reports_errors
def show_organization(reference: str, as_json: bool) -> None:
    """Show an organization, its limit overrides and its effective ``limits``."""
    document = organization_document(service().organizations.get_organization(reference))
    emit(document, as_json, lambda: print_record(document))


@organization_group.command("update")
@click.option("--slug", "reference", required=True, help="The organization's slug (or id).")
@click.option("--name")
@click.option("--email")
@click.option("--plan", help="A plan from APIKEYS_PLANS.")
@click.option("--active/--inactive", default=None, help="Inactive organizations' keys get 403.")
@click.option("--rate-limit-per-minute", type=int, help="Override the plan's per-minute limit.")
@click.option("--monthly-request-limit", type=int, help="Override the plan's monthly quota.")
@click.option("--max-api-keys", type=int, help="Override the plan's key count.")
@json_option
@reports_errors
def update_organization(reference: str, as_json: bool, active: bool | None, **changes: Any) -> None:
    """Change an organization; options left out stay as they are."""
    changes = {field: value for field, value in changes.items() if value is not None}
    if active is not None:
        changes["is_active"] = active
    organization = service().organizations.update_organization(reference, actor=actor(), **changes)
    document = organization_document(organization)
    if PLAN_FIELDS & changes.keys():  # as the admin API does: say what is beyond the plan now
        document["plan_excess"] = service().organizations.plan_excess(organization)
        if document["plan_excess"]:
            warning = json.dumps(document["plan_excess"])
            click.echo(f"warning: beyond the plan now: {warning}", err=True)
    emit(document, as_json, lambda: print_record(document))


# -- keys ------------------------------------------------------------------------------------------

KEY_COLUMNS = ("id", "name", "prefix", "hint", "environment", "scopes", "expires_at", "revoked_at")


@key_group.command("create")
@click.option("--org", "organization", required=True, help="Organization slug or id.")
@click.option("--name", required=True, help="What the key is for, e.g. 'Prod Key'.")
@click.option(
    "--env",
    "environment",
    default="live",
    show_default=True,
    type=click.Choice(ENVIRONMENTS),
    help="Key environment (in the key's prefix).",
)
@click.option(
    "--scopes",
    help="Comma-separated scopes, e.g. presentations:read,outline:* (wildcards allowed).",
)
@click.option("--role", "roles", multiple=True, help="A role from APIKEYS_ROLES (repeatable).")
@click.option("--level", type=click.Choice(LEVELS))
@click.option("--expires-in-days", type=int, help="Lifetime in days (no expiry by default).")
@click.option("--rate-limit", help="This key's own limit, e.g. '5/minute'.")
@click.option("--allowed-networks", help="Comma-separated CIDR networks it may be used from.")
@click.option("--description")
@json_option
@reports_errors
def create_key(
    organization: str,
    name: str,
    environment: str,
    scopes: str | None,
    roles: tuple[str, ...],
    level: str | None,
    expires_in_days: int | None,
    rate_limit: str | None,
    allowed_networks: str | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Create a key and print it: the only time the full key is shown."""
    created = service().keys.create_key(
        organization,
        name,
        environment,
        split(scopes),
        description=description,
        expires_in_days=expires_in_days,
        rate_limit=rate_limit,
        roles=list(roles),
        level=level,
        allowed_networks=split(allowed_networks),
        actor=actor(),
    )
    show_new_key(created_document(created), as_json)


@key_group.command("list")
@click.option("--org", "organization", required=True, help="Organization slug or id.")
@click.option("--include-revoked/--active-only", default=True, show_default=True)
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0, show_default=True)
@json_option
@reports_errors
def list_keys(
    organization: str, include_revoked: bool, limit: int, offset: int, as_json: bool
) -> None:
    """List an organization's keys, newest first (prefix and hint only, never the key)."""
    api_keys, total = service().keys.list_keys(
        organization, include_revoked=include_revoked, limit=limit, offset=offset
    )
    documents = [schemas.key_document(api_key) for api_key in api_keys]
    emit(
        {"items": documents, "total": total, "limit": limit, "offset": offset},
        as_json,
        lambda: print_table(documents, KEY_COLUMNS),
    )


@key_group.command("update")
@click.option("--key", "key_id", required=True, help="The key's id.")
@click.option("--name")
@click.option("--description")
@click.option("--scopes", help="Comma-separated; replaces the key's scopes ('' for none).")
@click.option("--role", "roles", multiple=True, help="Replaces the key's roles (repeatable).")
@click.option("--level", type=click.Choice([*LEVELS, "none"]), help="'none' removes it.")
@click.option("--rate-limit", help="The key's own limit; 'none' removes it.")
@click.option("--allowed-networks", help="Comma-separated CIDR networks; '' for anywhere.")
@json_option
@reports_errors
def update_key(key_id: str, as_json: bool, **options: Any) -> None:
    """Change a key's name, scopes, roles, level, rate limit or networks."""
    changes: dict[str, Any] = {}
    for field in ("name", "description"):
        if options[field] is not None:
            changes[field] = options[field]
    if options["scopes"] is not None:
        changes["scopes"] = split(options["scopes"])
    if options["roles"]:
        changes["roles"] = list(options["roles"])
    if options["level"] is not None:
        changes["level"] = None if options["level"] == "none" else options["level"]
    if options["rate_limit"] is not None:
        changes["rate_limit"] = None if options["rate_limit"] == "none" else options["rate_limit"]
    if options["allowed_networks"] is not None:
        changes["allowed_networks"] = split(options["allowed_networks"])
    document = schemas.key_document(service().keys.update_key(key_id, actor=actor(), **changes))
    emit(document, as_json, lambda: print_record(document))


@key_group.command("revoke")
@click.option("--key", "key_id", required=True, help="The key's id.")
@click.option("--reason", required=True, help="Why, for the record, e.g. 'Compromised'.")
@click.option("--by", "revoked_by", help="Who revokes it (default: your login).")
@json_option
@reports_errors
def revoke_key(key_id: str, reason: str, revoked_by: str | None, as_json: bool) -> None:
    """Revoke a key for good; it is refused from the next request on."""
    api_key = service().keys.revoke_key(key_id, reason=reason, revoked_by=revoked_by or actor())
    document = schemas.key_document(api_key)
    emit(document, as_json, lambda: print_record(document))


@key_group.command("rotate")
@click.option("--key", "key_id", required=True, help="The key's id.")
@click.option(
    "--overlap-hours",
    default=24.0,
    show_default=True,
    help="How long the old key keeps working (0: it stops now).",
)
@json_option
@reports_errors
def rotate_key(key_id: str, overlap_hours: float, as_json: bool) -> None:
    """Replace a key with a new one with the same settings; print the new key once."""
    created = service().keys.rotate_key(key_id, overlap_hours=overlap_hours, rotated_by=actor())
    show_new_key(created_document(created, replaces=key_id), as_json)


# -- usage and audit -------------------------------------------------------------------------------


@apikeys_cli.group("usage", cls=AppGroup, invoke_without_command=True)
@click.option("--org", "organization", help="Organization slug or id (required to show usage).")
@click.option(
    "--month",
    help="A calendar month (UTC), e.g. 2026-01. Default, without --start/--end: this one.",
)
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), help="First day (with --end).")
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), help="Day after the last one.")
@click.option("--key", "key_id", help="Only this key's usage.")
@json_option
@reports_errors
@with_appcontext  # a group's own callback is not wrapped as AppGroup's commands are
def usage(
    organization: str | None,
    month: str | None,
    start: datetime | None,
    end: datetime | None,
    key_id: str | None,
    as_json: bool,
) -> None:
    """Show usage: totals, errors, latency, by day, endpoint and status class; or run one of
    the commands below (keeping usage data in check).

    Without --month, --start or --end: the current calendar month (UTC).
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    if organization is None:
        fail("give --org, or one of the commands (see --help)")
        return
    get_state().flush_usage()
    if month is not None and (start is not None or end is not None):
        fail("give --month, or --start and --end, not both")
        return
    if start is not None and end is not None:
        first, last = start.date(), end.date()
    elif start is None and end is None:
        first, last = month_bounds(month or current_month())
    else:
        fail("give --month YYYY-MM, or --start and --end")
        return
    stats = schemas.usage_document(
        service().reports.usage_stats(organization, start=first, end=last, key=key_id)
    )

    def show() -> None:
        print_record(
            {
                field: stats[field]
                for field in (
                    "start",
                    "end",
                    "total_requests",
                    "errors",
                    "tokens_used",
                    "cost_usd",
                    "p50_ms",
                    "p95_ms",
                )
            }
        )
        if stats["by_day"]:
            click.echo("")
            print_table(stats["by_day"], ("date", "requests", "errors"))
        if stats["by_endpoint"]:
            click.echo("")
            print_table(
                stats["by_endpoint"], ("method", "endpoint", "requests", "errors", "average_ms")
            )

    emit(stats, as_json, show)


audit_group = AppGroup("audit", help="Check the audit trail.")
apikeys_cli.add_command(audit_group)


@audit_group.command("verify")
@json_option
@reports_errors
def verify_audit(as_json: bool) -> None:
    """Walk the hash chain; exit 1 naming the first edited, inserted or deleted record."""
    broken = get_state().verify_audit()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "intact": broken is None,
                    "first_bad_record": None if broken is None else broken.record_id,
                    "problem": None if broken is None else broken.problem,
                }
            )
        )
    if broken is not None:
        fail(f"the audit trail was tampered with at {broken}")
    elif not as_json:
        click.echo("The audit trail is intact.")


# -- seed and migrations ---------------------------------------------------------------------------


@apikeys_cli.command("seed")
@json_option
@reports_errors
def seed(as_json: bool) -> None:
    """Create "Default Organization" and a "Default Test Key" with every scope (once)."""
    organization, created = service().keys.seed()
    if created is None:
        existing, _ = service().keys.list_keys(organization, include_revoked=False, limit=100)
        key_id = next((str(key.id) for key in existing if key.name == DEFAULT_KEY_NAME), None)
        message = (
            f"Organization '{organization.slug}' and its default key {key_id} already exist; "
            "the key cannot be shown again. Rotate it to get a new one: "
            f"flask apikeys key rotate --key {key_id}"
        )
        emit(
            {
                "organization_id": str(organization.id),
                "key": None,
                "id": key_id,
                "message": message,
            },
            as_json,
            lambda: click.echo(message),
        )
        return
    show_new_key(created_document(created), as_json)


@apikeys_cli.command("install-migrations")
@click.option(
    "--directory", default="migrations", show_default=True, help="The app's Flask-Migrate folder."
)
@reports_errors
def install_migrations(directory: str) -> None:
    """Copy the extension's revisions the app lacks into its migrations, onto its head.

    Tables the database already has are stamped, not created again; revisions whose tables the
    app's own history creates are not copied. Errors are one line, never a traceback.
    """
    # Imported here: Alembic takes ~0.2 s to import and only this command needs it.
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    state = get_state()
    try:
        lines = install_revisions(directory, state.db.engine)
    except (RuntimeError, CommandError, SQLAlchemyError, OSError) as error:
        fail(" ".join(str(error).split()))
        return
    for line in lines:
        click.echo(line)
    written = any(line.startswith("wrote ") for line in lines)
    click.echo("Now run: flask db upgrade" if written else "Already up to date.")
