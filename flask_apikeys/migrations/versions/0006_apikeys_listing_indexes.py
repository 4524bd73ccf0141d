"""flask-apikeys: indexes for the lists at scale, and for deleting keys.

- ``ix_api_keys_replaced_by_id``: every key deleted (a purge, an organization's deletion)
  looks for the keys that point at it (``ON DELETE SET NULL``); without it each looked through
  the whole table: 415 s to delete an organization of 10,000 keys among 100,000 on PostgreSQL.
- ``ix_api_keys_organization_id_created_at`` and ``ix_organizations_created_at``: a page of
  an organization's keys (newest first) or of the organizations (oldest first) without
  sorting all of them.
- ``ix_api_key_audit_log_organization_id_created_at``: the dashboard's audit page reads an
  organization's records of a period (refused attempts with its stored keys carry its id),
  not every record of the period.

On PostgreSQL each index is built ``CONCURRENTLY``, outside the migration's transaction: the
tables stay writable while it is built (seconds for a million audit records). An index that
exists already (``apikeys.create_all()`` of this version makes them) is left alone.

Revision ID: apikeys_0006
Revises: apikeys_0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = "apikeys_0006"
down_revision = "apikeys_0005"
branch_labels = None
depends_on = None


def missing(table: str, name: str) -> bool:
    """Whether ``table`` lacks the index ``name`` (offline, every index is written out)."""
    if context.is_offline_mode():
        return True
    return all(index["name"] != name for index in sa.inspect(op.get_bind()).get_indexes(table))


@contextmanager
def building() -> Iterator[dict[str, Any]]:
    """The options of ``op.create_index`` that keep the table writable while it builds."""
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            yield {"postgresql_concurrently": True}
    else:
        yield {}


def upgrade() -> None:
    with building() as options:
        # By literal name, each: install-migrations looks for them.
        if missing("api_keys", "ix_api_keys_replaced_by_id"):
            op.create_index("ix_api_keys_replaced_by_id", "api_keys", ["replaced_by_id"], **options)
        if missing("api_keys", "ix_api_keys_organization_id_created_at"):
            op.create_index(
                "ix_api_keys_organization_id_created_at",
                "api_keys",
                ["organization_id", "created_at", "id"],
                **options,
            )
        if missing("organizations", "ix_organizations_created_at"):
            op.create_index(
                "ix_organizations_created_at", "organizations", ["created_at", "id"], **options
            )
        if missing("api_key_audit_log", "ix_api_key_audit_log_organization_id_created_at"):
            op.create_index(
                "ix_api_key_audit_log_organization_id_created_at",
                "api_key_audit_log",
                ["organization_id", "created_at", "id"],
                **options,
            )


def downgrade() -> None:
    op.drop_index("ix_api_key_audit_log_organization_id_created_at", table_name="api_key_audit_log")
    op.drop_index("ix_organizations_created_at", table_name="organizations")
    op.drop_index("ix_api_keys_organization_id_created_at", table_name="api_keys")
    if op.get_context().dialect.name not in {"mysql", "mariadb"}:
        # MySQL and MariaDB keep an index for every foreign key: having dropped their own for
        # this one, they refuse to drop it (dropping the table, at the first revision, does).
        op.drop_index("ix_api_keys_replaced_by_id", table_name="api_keys")
