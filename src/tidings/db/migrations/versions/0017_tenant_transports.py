"""Each tenant's own sending accounts (``tenant_transports``) and its VERP bounce domain.

A transport's URL is stored sealed (``sealing.py``) beside a masked copy for reads; its health
columns are what the workers write when it keeps failing, and what ``GET /v1/transports`` and the
dashboard show. ``tenant_settings.bounce_domain`` is a nullable addition (no row is rewritten).

Revision ID: 0017_tenant_transports
Revises: 0016_sender_domains
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, UTCDateTime

revision: str = "0017_tenant_transports"
# Re-chain to 0016 (sender domains) when both are merged.
down_revision: str | None = "0016_sender_domains"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_transports",
        sa.Column("id", BigId, sa.Identity(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url_sealed", sa.Text(), nullable=False),
        sa.Column("url_masked", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_probe_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_checked_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_transports_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_transports")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_tenant_transports_tenant_name"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_tenant_transports_tenant", "tenant_transports", ["tenant_id", "priority", "id"]
    )
    with op.batch_alter_table("tenant_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bounce_domain", sa.String(length=253), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenant_settings", schema=None) as batch_op:
        batch_op.drop_column("bounce_domain")
    op.drop_index("ix_tenant_transports_tenant", table_name="tenant_transports")
    op.drop_table("tenant_transports")
