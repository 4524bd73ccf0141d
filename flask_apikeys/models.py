"""The extension's tables, on a metadata of their own.

The models do not inherit from the app's ``db.Model``: an extension cannot know the app's model
class at import time, and keeping our tables in :data:`metadata` lets the app's own migrations
ignore them (see ``docs/migrations.rst``). They are used through the app's ``db.session``, so
they share its engine, connection pool and transactions. Create them with
``apikeys.create_all()`` or the shipped Alembic migrations.

Every timestamp is stored in UTC and returned timezone-aware, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


#: A timestamp column to the microsecond everywhere: MySQL's and MariaDB's ``DATETIME`` drop
#: the fraction (and the audit chain, which hashes it, would then not verify).
TimestampType = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite keeps no zone, and we never want local time."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(TimestampType)

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("flask-apikeys stores timezone-aware datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the extension's models, bound to :data:`metadata`."""

    metadata = metadata


class Organization(Base):
    """A tenant: it owns keys, has a plan, and may override the plan's limits."""

    __tablename__ = "organizations"
    __table_args__ = (
        # The organization list's order (oldest first): a page without sorting every row.
        sa.Index("ix_organizations_created_at", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(200))
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True, index=True)
    email: Mapped[str] = mapped_column(sa.String(320), index=True)
    plan: Mapped[str] = mapped_column(sa.String(50))
    is_active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: Overrides of the plan's limits; ``None`` means "what the plan says".
    monthly_request_limit: Mapped[int | None] = mapped_column(sa.Integer)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(sa.Integer)
    max_api_keys: Mapped[int | None] = mapped_column(sa.Integer)

    api_keys: Mapped[list[APIKey]] = relationship(back_populates="organization")

    def __repr__(self) -> str:
        return f"<Organization {self.slug!r} plan={self.plan!r}>"


class APIKey(Base):
    """A key's record. The key itself is never stored: only its hash, a prefix and a hint."""

    __tablename__ = "api_keys"
    __table_args__ = (
        # An organization's key list (newest first): a page without sorting all its keys.
        sa.Index("ix_api_keys_organization_id_created_at", "organization_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    #: ``pk_live_AbCd``: recognisable, far too short to authenticate.
    key_prefix: Mapped[str] = mapped_column(sa.String(40), index=True)
    #: Deferred: listing keys never even loads the hash.
    key_hash: Mapped[str] = mapped_column(sa.String(160), unique=True, index=True, deferred=True)
    key_hint: Mapped[str] = mapped_column(sa.String(8))
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str | None] = mapped_column(sa.Text)
    environment: Mapped[str] = mapped_column(sa.String(10))
    is_active: Mapped[bool] = mapped_column(sa.Boolean, default=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(sa.String(320))
    revoked_reason: Mapped[str | None] = mapped_column(sa.Text)
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: Named roles from ``APIKEYS_ROLES``, expanded to scopes when the key is verified.
    roles: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: ``read-only``, ``read-write`` or ``admin`` (see :mod:`flask_apikeys.permissions`).
    level: Mapped[str | None] = mapped_column(sa.String(20))
    #: CIDR networks the key may be used from; empty means anywhere.
    allowed_networks: Mapped[list[str]] = mapped_column(JSONType, default=list)
    custom_rate_limit: Mapped[str | None] = mapped_column(sa.String(100))
    total_requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_request_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Free-form data for the app (a customer id, a label), read on ``current_key.metadata``.
    key_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    #: The key that replaced this one in a rotation, if any. Indexed, as every foreign key:
    #: deleting keys (a purge, an organization's) looks up the keys that point at each one.
    replaced_by_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )

    organization: Mapped[Organization] = relationship(back_populates="api_keys")

    def __repr__(self) -> str:
        return f"<APIKey {self.key_prefix}…{self.key_hint} {self.name!r}>"


BigIdentity = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Double precision everywhere: MySQL's and MariaDB's ``FLOAT`` is single precision.
DoubleType = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")


class APIKeyUsage(Base):
    """One authenticated request: who, what, how it ended and how long it took."""

    __tablename__ = "api_key_usage"

    id: Mapped[int] = mapped_column(BigIdentity, primary_key=True, autoincrement=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: The URL rule (``/v1/items/<id>``), so statistics group by endpoint, not by id.
    endpoint: Mapped[str] = mapped_column(sa.String(300))
    method: Mapped[str] = mapped_column(sa.String(10))
    status_code: Mapped[int] = mapped_column(sa.SmallInteger)
    response_time_ms: Mapped[float] = mapped_column(DoubleType)
    tokens_used: Mapped[int | None] = mapped_column(sa.Integer)
    cost_usd: Mapped[float | None] = mapped_column(sa.Numeric(12, 6, asdecimal=False))
    ip_address: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(300))
    error_message: Mapped[str | None] = mapped_column(sa.String(500))
    error_code: Mapped[str | None] = mapped_column(sa.String(50))


class AuditRecord(Base):
    """One entry of the audit trail, chained to the one before it by a hash."""

    __tablename__ = "api_key_audit_log"
    __table_args__ = (
        # An organization's records of a period (the dashboard's audit page; refused attempts
        # with its stored keys carry its id): no other organization's records are read.
        sa.Index(
            "ix_api_key_audit_log_organization_id_created_at",
            "organization_id",
            "created_at",
            "id",
        ),
    )

    id: Mapped[int] = mapped_column(BigIdentity, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    event: Mapped[str] = mapped_column(sa.String(50), index=True)
    actor: Mapped[str | None] = mapped_column(sa.String(320))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    key_prefix: Mapped[str | None] = mapped_column(sa.String(40))
    key_hint: Mapped[str | None] = mapped_column(sa.String(8))
    ip_address: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(300))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: Unique: two writers that read the same chain head cannot both append after it.
    previous_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    record_hash: Mapped[str] = mapped_column(sa.String(64))


#: Upper edges (milliseconds, included) of the latency histogram of a rollup row; a last,
#: open bucket counts what took longer. Steps of 1.25–1.5×: an interpolated percentile lies in
#: the bucket of the true one, so it is off by less than that bucket's width.
LATENCY_BUCKET_EDGES_MS = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700,
    1000, 1500, 2000, 3000, 5000, 10000, 30000,
)  # fmt: skip
#: The histogram's column names, one per bucket (the last is the open one).
LATENCY_BUCKET_COLUMNS = tuple(
    f"latency_bucket_{index:02d}" for index in range(len(LATENCY_BUCKET_EDGES_MS) + 1)
)
#: What a rollup row's ``error_code`` holds when the requests carried none (a unique key
#: treats NULLs as distinct, so they would never merge).
NO_ERROR_CODE = ""
#: The ``api_key_id`` of the rollup rows that sum every key of an organization (the nil UUID,
#: which no key has): an organization's statistics read those, one row where it has many keys.
ALL_KEYS = uuid.UUID(int=0)
#: The two bucket sizes of rollups: hours (for the edges of a period) and UTC days.
ROLLUP_GRANULARITIES = ("hour", "day")


class APIKeyUsageRollup(Base):
    """The sums of one organization's requests of one key, endpoint, status class and error
    code in one hour or one UTC day: what every statistic reads (see ``docs/usage.rst``).

    ``api_key_id`` has no foreign key on purpose: an organization's billed history stays whole
    when a long-revoked key is purged.
    """

    __tablename__ = "api_key_usage_rollups"
    __table_args__ = (
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
        # The backfill's and the retention's lookups by time, over every organization.
        sa.Index("ix_api_key_usage_rollups_bucket_start", "bucket_start", "granularity"),
    )

    id: Mapped[int] = mapped_column(BigIdentity, primary_key=True, autoincrement=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE")
    )
    #: ``hour`` or ``day``.
    granularity: Mapped[str] = mapped_column(sa.String(4))
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime)
    api_key_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    method: Mapped[str] = mapped_column(sa.String(10))
    endpoint: Mapped[str] = mapped_column(sa.String(300))
    #: ``status_code // 100``: 2 for 2xx.
    status_class: Mapped[int] = mapped_column(sa.SmallInteger)
    error_code: Mapped[str] = mapped_column(sa.String(50), default=NO_ERROR_CODE)
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    errors: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    latency_sum_ms: Mapped[float] = mapped_column(DoubleType, default=0.0)
    tokens_used: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(sa.Numeric(20, 6, asdecimal=False), default=0.0)


for _column in LATENCY_BUCKET_COLUMNS:
    APIKeyUsageRollup.__table__.append_column(  # type: ignore[attr-defined]
        sa.Column(_column, sa.BigInteger, nullable=False, default=0)
    )


class DashboardSession(Base):
    """A signed-in dashboard browser: only the hash of its cookie's token is stored.

    Server-side so that signing out and expiry are real, and so that revoking (or rotating
    away) the admin key that signed in ends its sessions on their next request.
    ``api_key_id`` is ``None`` for the bootstrap admin key.
    """

    __tablename__ = "apikeys_dashboard_sessions"

    #: SHA-256 (hex) of the cookie's random token.
    token_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: Sent in every form and compared in constant time (CSRF).
    csrf_secret: Mapped[str] = mapped_column(sa.String(64))


class RateLimitCounter(Base):
    """One rate-limit counter, with ``APIKEYS_RATELIMIT_STORAGE_URI = "database"`` (the source
    documents' ``rate_limit_tracking`` table). Keyed by the counter's name, as on Redis: a
    counter may be a key's, an organization's, a quota or a client address's.

    A fixed window keeps its count in ``request_count`` until ``window_end``; a sliding one
    keeps the count of the aligned window starting at ``window_start`` and the window
    before's in ``previous_count``. Times are POSIX seconds.
    """

    __tablename__ = "api_key_rate_limit_tracking"

    counter_key: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    window_start: Mapped[float] = mapped_column(DoubleType)
    window_end: Mapped[float] = mapped_column(DoubleType, index=True)
    request_count: Mapped[int] = mapped_column(sa.BigInteger)
    previous_count: Mapped[int] = mapped_column(sa.BigInteger)
