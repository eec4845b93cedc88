"""events: partial index of campaign bounces, complaints and pauses, for the reputation guardrails

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 02:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNAL_EVENTS = "type IN ('bounced', 'complained', 'campaign_paused')"


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_events_campaign_signal",
            ["campaign_id", "type", "message_id"],
            unique=False,
            postgresql_where=sa.text(SIGNAL_EVENTS),
            sqlite_where=sa.text(SIGNAL_EVENTS),
        )


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_events_campaign_signal",
            postgresql_where=sa.text(SIGNAL_EVENTS),
            sqlite_where=sa.text(SIGNAL_EVENTS),
        )
