"""flask-apikeys: organizations, api_keys, api_key_usage and api_key_audit_log.

Revision ID: apikeys_0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision = "apikeys_0001"
down_revision = None  # set to the app's head when copied in
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
#: To the microsecond on MySQL/MariaDB too (their plain DATETIME drops it; the audit chain
#: hashes it).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
#: MySQL/MariaDB FLOAT is single precision.
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("plan", sa.String(length=50), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("monthly_request_limit", sa.Integer(), nullable=True),
        sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_api_keys", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
    )
    op.create_index(op.f("ix_organizations_email"), "organizations", ["email"])
    op.create_index(op.f("ix_organizations_slug"), "organizations", ["slug"], unique=True)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("key_prefix", sa.String(length=40), nullable=False),
        sa.Column("key_hash", sa.String(length=160), nullable=False),
        sa.Column("key_hint", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("environment", sa.String(length=10), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_by", sa.String(length=320), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.Column("scopes", JSON, nullable=False),
        sa.Column("roles", JSON, nullable=False),
        sa.Column("level", sa.String(length=20), nullable=True),
        sa.Column("allowed_networks", JSON, nullable=False),
        sa.Column("custom_rate_limit", sa.String(length=100), nullable=True),
        sa.Column("total_requests", sa.BigInteger(), nullable=False),
        sa.Column("last_request_at", TIMESTAMP, nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("replaced_by_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_api_keys_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["replaced_by_id"],
            ["api_keys.id"],
            name=op.f("fk_api_keys_replaced_by_id_api_keys"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_is_active"), "api_keys", ["is_active"])
    op.create_index(op.f("ix_api_keys_key_hash"), "api_keys", ["key_hash"], unique=True)
    op.create_index(op.f("ix_api_keys_key_prefix"), "api_keys", ["key_prefix"])
    op.create_index(op.f("ix_api_keys_organization_id"), "api_keys", ["organization_id"])
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "api_key_usage",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("timestamp", TIMESTAMP, nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response_time_ms", DOUBLE, nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Numeric(precision=12, scale=6, asdecimal=False), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.Column("error_message", sa.String(length=500), nullable=True),
        sa.Column("error_code", sa.String(length=50), nullable=True),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_api_key_usage_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_api_key_usage_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key_usage")),
    )
    op.create_index(op.f("ix_api_key_usage_api_key_id"), "api_key_usage", ["api_key_id"])
    op.create_index(op.f("ix_api_key_usage_organization_id"), "api_key_usage", ["organization_id"])
    op.create_index(op.f("ix_api_key_usage_timestamp"), "api_key_usage", ["timestamp"])
    op.create_table(
        "api_key_audit_log",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("event", sa.String(length=50), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("key_prefix", sa.String(length=40), nullable=True),
        sa.Column("key_hint", sa.String(length=8), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.Column("details", JSON, nullable=False),
        sa.Column("previous_hash", sa.String(length=64), nullable=False),
        sa.Column("record_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key_audit_log")),
        sa.UniqueConstraint("previous_hash", name=op.f("uq_api_key_audit_log_previous_hash")),
    )
    op.create_index(op.f("ix_api_key_audit_log_api_key_id"), "api_key_audit_log", ["api_key_id"])
    op.create_index(op.f("ix_api_key_audit_log_created_at"), "api_key_audit_log", ["created_at"])
    op.create_index(op.f("ix_api_key_audit_log_event"), "api_key_audit_log", ["event"])
    op.create_index(
        op.f("ix_api_key_audit_log_organization_id"), "api_key_audit_log", ["organization_id"]
    )


def downgrade() -> None:
    op.drop_table("api_key_audit_log")
    op.drop_table("api_key_usage")
    op.drop_table("api_keys")
    op.drop_table("organizations")
