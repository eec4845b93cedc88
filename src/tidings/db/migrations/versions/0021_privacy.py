"""Retention and GDPR access: where the retention purge stands, and an index of person events.

``retention_cursors`` holds, per purged table, the last id the purge is done with
(``queue/retention.py``). ``ix_events_contact`` is partial (``contact_id IS NOT NULL``): only
events about a person (unsubscribes, erasures) have a contact, so message events never write to it.

Revision ID: 0021_privacy
Revises: 0020_segments
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import UTCDateTime

revision: str = "0021_privacy"
# Re-chain to the newest migration when merging (0016-0020 are written at the same time).
down_revision: str | None = "0020_segments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PRESENT = "contact_id IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "retention_cursors",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_retention_cursors")),
    )
    op.create_index(
        "ix_events_contact",
        "events",
        ["contact_id"],
        postgresql_where=sa.text(_PRESENT),
        sqlite_where=sa.text(_PRESENT),
    )


def downgrade() -> None:
    op.drop_index("ix_events_contact", table_name="events")
    op.drop_table("retention_cursors")
