"""Segments: saved filters over contacts, a campaign's ``segment_ids``, and the index that makes
an attribute filter fast on PostgreSQL.

``contacts.attributes`` is ``jsonb`` on PostgreSQL (db/types.py ``Json``): a GIN index with
``jsonb_path_ops`` (smaller and faster than the default ``jsonb_ops``; it serves ``@>``, which is
what ``eq`` and ``in`` on an attribute compile to). SQLite gets no index: JSON1 reads the text, and
an expression index per attribute name cannot be known in advance. The campaign columns are
additions (``ADD COLUMN`` on SQLite, no rewrite on PostgreSQL); ``segment_ids`` defaults to ``[]``
so existing campaigns need no back-fill.

Revision ID: 0020_segments
Revises: 0019_tracking
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, Json, NullableJson, UTCDateTime

revision: str = "0020_segments"
down_revision: str | None = "0019_tracking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", BigId, sa.Identity(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("filter", Json, nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_segments_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_segments_tenant_name"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("segment_ids", Json, nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("segment_filter", NullableJson, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY would not hold a lock on a big table, but cannot run in the migration's
        # transaction; a site with millions of contacts can create it by hand first (same name).
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_contacts_attributes ON contacts "
            "USING gin (attributes jsonb_path_ops)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_contacts_attributes")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("segment_filter")
        batch_op.drop_column("segment_ids")
    op.drop_table("segments")
