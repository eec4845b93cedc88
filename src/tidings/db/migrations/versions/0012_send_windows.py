"""Sending windows on campaigns and messages, and the tenant's settings row (its time zone).

``tenant_settings`` holds one row per tenant and grows a column per setting (issue 13 adds the
tracking switches). ``messages.send_window`` / ``window_timezone`` are nullable additions: on SQLite
``ADD COLUMN`` without a table rebuild, on PostgreSQL without rewriting a row.

Revision ID: 0012_send_windows
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, NullableJson, UTCDateTime

revision: str = "0012_send_windows"
# The revision id of 0009_ids_never_reused.py is "0009"; the coordinator re-chains 0010-0013.
down_revision: str | None = "0011_adaptive_domain_rates"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_settings",
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_settings_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_settings")),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_window", NullableJson, nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_window", NullableJson, nullable=True))
        batch_op.add_column(sa.Column("window_timezone", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("window_timezone")
        batch_op.drop_column("send_window")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("send_window")
    op.drop_table("tenant_settings")
