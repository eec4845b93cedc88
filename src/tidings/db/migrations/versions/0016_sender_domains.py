"""sender_domains: each tenant's sending domains with their DKIM keys (sealed) and status.

Revision ID: 0016_sender_domains
Revises: 0015_campaign_preparation
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, UTCDateTime

revision: str = "0016_sender_domains"
down_revision: str | None = "0015_campaign_preparation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sender_domains",
        sa.Column("id", BigId, sa.Identity(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("domain", sa.String(length=253), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("selector", sa.String(length=63), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("verified_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("checked_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("previous_selector", sa.String(length=63), nullable=True),
        sa.Column("previous_algorithm", sa.String(length=16), nullable=True),
        sa.Column("previous_private_key", sa.Text(), nullable=True),
        sa.Column("previous_public_key", sa.Text(), nullable=True),
        sa.Column("previous_verified", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sender_domains_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sender_domains")),
        sa.UniqueConstraint("tenant_id", "domain", name="uq_sender_domains_tenant_domain"),
        sqlite_autoincrement=True,  # ids never reused (0009)
    )


def downgrade() -> None:
    op.drop_table("sender_domains")
