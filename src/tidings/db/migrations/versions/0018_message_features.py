"""What a message can carry: reply_to, extra headers and attachments, on templates, campaigns and
messages, and a template's own sender; attachment contents stored once per tenant and content.

``features`` is one nullable JSON column (null when a message carries none of these, as almost
all do: the claim reads one more NULL, not three), and ``templates.from_address`` is nullable: on
SQLite ``ADD COLUMN`` without a table rebuild, on PostgreSQL without rewriting a row.

Revision ID: 0018_message_features
Revises: 0017_tenant_transports
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, NullableJson, UTCDateTime

revision: str = "0018_message_features"
down_revision: str | None = "0017_tenant_transports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("id", BigId, sa.Identity(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_attachments_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachments")),
        sa.UniqueConstraint("tenant_id", "sha256", name="uq_attachments_tenant_sha256"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("from_address", sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column("features", NullableJson, nullable=True))
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("features", NullableJson, nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("features", NullableJson, nullable=True))


def downgrade() -> None:
    # Not a batch: on SQLite that rebuilds ``messages`` and loses its count triggers (0014);
    # ALTER TABLE … DROP COLUMN (SQLite 3.35+) keeps the table and its triggers.
    op.execute("ALTER TABLE messages DROP COLUMN features")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("features")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("features")
        batch_op.drop_column("from_address")
    op.drop_table("attachments")
