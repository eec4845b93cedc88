"""A campaign's fan-out goes on in committed chunks after its first: where it stands, and who has it.

``fanout_cursor`` is the id of the last contact whose message is written (null once the fan-out is
done); ``preparing_until`` is the lease of the worker writing the next chunk, after which another
worker takes over from the cursor. Both are nullable additions: ``ADD COLUMN`` on SQLite without
a table rebuild, on PostgreSQL without rewriting a row.

Revision ID: 0015_campaign_preparation
Revises: 0014_message_counts
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, UTCDateTime

revision: str = "0015_campaign_preparation"
down_revision: str | None = "0014_message_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fanout_cursor", BigId, nullable=True))
        batch_op.add_column(sa.Column("preparing_until", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("preparing_until")
        batch_op.drop_column("fanout_cursor")
