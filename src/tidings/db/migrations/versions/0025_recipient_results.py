"""Per-recipient engagement that outlives the hits: ``messages.first_opened_at`` and
``first_clicked_at``, a person's first open and first click of each message (machines' never
count), set by the tracking flush in the transaction that records the hits. The hits are purged
after the retention period; these two columns, like the campaign summaries of 0019, are not.

Both columns are nullable and added with a plain ``ADD COLUMN``: no table rebuild on SQLite (which
would drop ``messages``' counting triggers of 0019 and its ``AUTOINCREMENT`` of 0009), no rewrite
on PostgreSQL. They are filled from the hits still kept.

Two partial indexes, ``(campaign_id, contact_id)`` of the messages a person opened (clicked), serve
the segment leaves ``opened_campaign``/``clicked_campaign`` (``queue/segments.py``): without them a
leaf about a campaign of a million recipients reads a million message rows to find its openers;
with them it reads the openers' index entries only. They cost one entry per message the first
time a person opens (clicks) it, nothing at fan-out (the columns are NULL then).

Revision ID: 0025_recipient_results
Revises: 0024_contacts_by_tenant
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import UTCDateTime

revision: str = "0025_recipient_results"
down_revision: str | None = "0024_contacts_by_tenant"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: column, the hits' kind it records, its partial index
COLUMNS = (
    ("first_opened_at", "open", "ix_messages_campaign_opened"),
    ("first_clicked_at", "click", "ix_messages_campaign_clicked"),
)


def upgrade() -> None:
    for column, kind, index in COLUMNS:
        op.add_column("messages", sa.Column(column, UTCDateTime(timezone=True), nullable=True))
        # People's hits only (the honeypot link is always a machine's); the hits are indexed by
        # message, so each message's minimum is one short index range.
        op.execute(
            f"UPDATE messages SET {column} = ("
            "SELECT min(h.created_at) FROM tracking_hits h "
            f"WHERE h.message_id = messages.id AND h.kind = '{kind}' AND h.machine = false) "
            "WHERE id IN (SELECT message_id FROM tracking_hits "
            f"WHERE kind = '{kind}' AND machine = false)"
        )
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            index,
            "messages",
            ["campaign_id", "contact_id"],
            postgresql_where=where,
            sqlite_where=where,
        )


def downgrade() -> None:
    for column, _kind, index in COLUMNS:
        op.drop_index(index, table_name="messages")
        # Plain DROP COLUMN (SQLite 3.35+), not a batch rebuild: see the docstring.
        op.execute(f"ALTER TABLE messages DROP COLUMN {column}")
