"""flask-apikeys: api_key_usage_rollups, the hour and day sums every usage statistic reads.

After upgrading, ``flask apikeys usage backfill-rollups`` adds the usage rows written before
(see docs/usage.rst).

Revision ID: apikeys_0002
Revises: apikeys_0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "apikeys_0002"
down_revision = "apikeys_0001"
branch_labels = None
depends_on = None

#: To the microsecond on MySQL/MariaDB too, as every timestamp of the extension.
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")
#: The histogram's buckets, as ``flask_apikeys.models.LATENCY_BUCKET_COLUMNS`` (written out:
#: a migration must not change when the models do).
LATENCY_BUCKETS = 25


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "api_key_usage_rollups",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("granularity", sa.String(length=4), nullable=False),
        sa.Column("bucket_start", TIMESTAMP, nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=False),
        sa.Column("status_class", sa.SmallInteger(), nullable=False),
        sa.Column("error_code", sa.String(length=50), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum_ms", DOUBLE, nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=6, asdecimal=False), nullable=False),
        *(
            sa.Column(f"latency_bucket_{index:02d}", sa.BigInteger(), nullable=False)
            for index in range(LATENCY_BUCKETS)
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_api_key_usage_rollups_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key_usage_rollups")),
        sa.UniqueConstraint(
            "organization_id",
            "api_key_id",
            "granularity",
            "bucket_start",
            "method",
            "endpoint",
            "status_class",
            "error_code",
            name="uq_api_key_usage_rollups_bucket",
        ),
    )


def downgrade() -> None:
    op.drop_table("api_key_usage_rollups")
