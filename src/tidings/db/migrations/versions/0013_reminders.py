"""Reminders tied to an event: a message's ``event_at`` and ``reminder_offset``, and one message
per (tenant, reference, offset) at most.

The unique index is partial, like the idempotency key's (0007): only reminders have an offset, so
no other message writes an entry into it. Both columns are nullable and have no default: adding
them rewrites no row on either database.

Revision ID: 0013_reminders
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import UTCDateTime

revision: str = "0013_reminders"
down_revision: str | None = "0012_send_windows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("reminder_offset", sa.Integer(), nullable=True))
    where = sa.text("reminder_offset IS NOT NULL")
    op.create_index(
        "uq_messages_tenant_reminder",
        "messages",
        ["tenant_id", "reference", "reminder_offset"],
        unique=True,
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_index("uq_messages_tenant_reminder", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("reminder_offset")
        batch_op.drop_column("event_at")
