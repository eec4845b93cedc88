"""domain_rates: an adaptive sending rate per (tenant, recipient domain) that told us to slow down.

Revision ID: 0011_adaptive_domain_rates
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, UTCDateTime

revision: str = "0011_adaptive_domain_rates"
# The revision before is "0009" (the file 0009_ids_never_reused.py names itself so); the
# coordinator re-chains 0010-0013 at merge.
down_revision: str | None = "0010_exact_throttles"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "domain_rates",
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("slowed_from", sa.Float(), nullable=False),
        sa.Column("last_slowdown_at", sa.Float(), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.Column("paused_until", sa.Float(), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_domain_rates_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "domain", name=op.f("pk_domain_rates")),
    )
    op.create_index(
        "ix_domain_rates_last_slowdown_at", "domain_rates", ["last_slowdown_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_domain_rates_last_slowdown_at", table_name="domain_rates")
    op.drop_table("domain_rates")
