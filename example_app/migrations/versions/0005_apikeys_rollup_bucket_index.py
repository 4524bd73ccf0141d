"""flask-apikeys: an index of api_key_usage_rollups by time, for the backfill and the pruning.

The rollup backfill deletes and sums the rows of one hour and one day across every
organization, and the pruning deletes those before a moment: without this index each of those
statements read the whole table.

Revision ID: apikeys_0005
Revises: apikeys_0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "apikeys_0005"
down_revision = "apikeys_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_api_key_usage_rollups_bucket_start"),
        "api_key_usage_rollups",
        ["bucket_start", "granularity"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_api_key_usage_rollups_bucket_start"), table_name="api_key_usage_rollups")
