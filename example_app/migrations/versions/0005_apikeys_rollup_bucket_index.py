"""flask-apikeys: an index of api_key_usage_rollups by time, for the backfill and the pruning.

The rollup backfill deletes and sums the rows of one hour and one day across every
organization, and the pruning deletes those before a moment: without this index each of those
statements read the whole table. On PostgreSQL it is built ``CONCURRENTLY``, outside the
migration's transaction: built inside it, the usage writer's flushes waited for it (0.6 s
for the rollups of a million requests, longer with every month they are kept).

Revision ID: apikeys_0005
Revises: apikeys_0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = "apikeys_0005"
down_revision = "apikeys_0004"
branch_labels = None
depends_on = None


INDEX = "ix_api_key_usage_rollups_bucket_start"


@contextmanager
def building() -> Iterator[dict[str, Any]]:
    """The options of ``op.create_index`` that keep the table writable while it builds."""
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            yield {"postgresql_concurrently": True}
    else:
        yield {}


def upgrade() -> None:
    if not context.is_offline_mode():
        # A database made with ``apikeys.create_all()`` by this version has it already
        # (``install-migrations`` stamps only the revisions that create tables).
        indexes = sa.inspect(op.get_bind()).get_indexes("api_key_usage_rollups")
        if any(index["name"] == INDEX for index in indexes):
            return
    with building() as options:
        op.create_index(
            "ix_api_key_usage_rollups_bucket_start",  # by name: install-migrations looks for it
            "api_key_usage_rollups",
            ["bucket_start", "granularity"],
            **options,
        )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="api_key_usage_rollups")
