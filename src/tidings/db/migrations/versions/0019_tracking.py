"""Open and click tracking: the settings and overrides that turn it on, the raw hits, and each
campaign's summary (totals, links, a per-minute timeline) that statistics read instead of the hits.

Every column added to an existing table is nullable or has a server default: ``ADD COLUMN``
without a table rebuild on SQLite (``messages`` keeps its 0014 triggers), without a rewrite on
PostgreSQL.

Revision ID: 0019_tracking
Revises: 0015_campaign_preparation (to be re-chained after 0016-0018)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, UTCDateTime

revision: str = "0019_tracking"
down_revision: str | None = "0015_campaign_preparation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNT = sa.BigInteger()


def _counts(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(name, _COUNT, nullable=False) for name in names]


def upgrade() -> None:
    with op.batch_alter_table("tenant_settings") as batch_op:
        for name in ("track_opens", "track_clicks"):
            batch_op.add_column(
                sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())
            )
    for table in ("campaigns", "messages"):
        with op.batch_alter_table(table) as batch_op:
            for name in ("track_opens", "track_clicks"):
                batch_op.add_column(sa.Column(name, sa.Boolean(), nullable=True))
    op.create_table(
        "tracking_hits",
        sa.Column("id", BigId, sa.Identity(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("campaign_id", BigId, nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("link_index", sa.Integer(), nullable=True),
        sa.Column("machine", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("network", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracking_hits"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tracking_hits_message", "tracking_hits", ["message_id", "id"])
    op.create_index("ix_tracking_hits_created", "tracking_hits", ["created_at"])
    op.create_table(
        "campaign_engagement",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        *_counts(
            "opens_unique",
            "opens_total",
            "opens_machine",
            "clicks_unique",
            "clicks_total",
            "clicks_machine",
        ),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", name="pk_campaign_engagement"),
    )
    op.create_table(
        "campaign_links",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("link_index", sa.Integer(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        *_counts("clicks_unique", "clicks_total", "clicks_machine"),
        sa.PrimaryKeyConstraint("campaign_id", "link_index", name="pk_campaign_links"),
    )
    op.create_table(
        "campaign_timeline",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("minute", UTCDateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        *_counts("opens", "clicks", "opens_machine", "clicks_machine"),
        sa.PrimaryKeyConstraint("campaign_id", "minute", name="pk_campaign_timeline"),
    )


def downgrade() -> None:
    op.drop_table("campaign_timeline")
    op.drop_table("campaign_links")
    op.drop_table("campaign_engagement")
    op.drop_index("ix_tracking_hits_created", table_name="tracking_hits")
    op.drop_index("ix_tracking_hits_message", table_name="tracking_hits")
    op.drop_table("tracking_hits")
    # Plain ``DROP COLUMN`` (SQLite 3.35+), not a batch rebuild: rebuilding ``messages`` would drop
    # the 0014 counting triggers with the old table.
    for table in ("messages", "campaigns", "tenant_settings"):
        for name in ("track_clicks", "track_opens"):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
