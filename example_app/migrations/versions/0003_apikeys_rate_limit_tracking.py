"""flask-apikeys: api_key_rate_limit_tracking, the database storage of rate-limit counters.

Revision ID: apikeys_0003
Revises: apikeys_0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "apikeys_0003"
down_revision = "apikeys_0002"
branch_labels = None
depends_on = None

#: MySQL/MariaDB FLOAT is single precision.
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "api_key_rate_limit_tracking",
        sa.Column("counter_key", sa.String(length=250), nullable=False),
        sa.Column("window_start", DOUBLE, nullable=False),
        sa.Column("window_end", DOUBLE, nullable=False),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("previous_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("counter_key", name=op.f("pk_api_key_rate_limit_tracking")),
    )
    op.create_index(
        op.f("ix_api_key_rate_limit_tracking_window_end"),
        "api_key_rate_limit_tracking",
        ["window_end"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_api_key_rate_limit_tracking_window_end"),
        table_name="api_key_rate_limit_tracking",
    )
    op.drop_table("api_key_rate_limit_tracking")
