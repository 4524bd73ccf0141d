"""flask-apikeys: apikeys_dashboard_sessions, the server-side sessions of the dashboard.

Revision ID: apikeys_0004
Revises: apikeys_0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "apikeys_0004"
down_revision = "apikeys_0003"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "apikeys_dashboard_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("csrf_secret", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_apikeys_dashboard_sessions_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_apikeys_dashboard_sessions_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_apikeys_dashboard_sessions")),
    )
    op.create_index(
        op.f("ix_apikeys_dashboard_sessions_api_key_id"),
        "apikeys_dashboard_sessions",
        ["api_key_id"],
    )
    op.create_index(
        op.f("ix_apikeys_dashboard_sessions_organization_id"),
        "apikeys_dashboard_sessions",
        ["organization_id"],
    )
    op.create_index(
        op.f("ix_apikeys_dashboard_sessions_expires_at"),
        "apikeys_dashboard_sessions",
        ["expires_at"],
    )


def downgrade() -> None:
    # Dropping the table drops its indexes; MySQL refuses to drop an index a foreign key uses.
    op.drop_table("apikeys_dashboard_sessions")
