"""Public sign-up and double opt-in: three columns on ``lists`` and the ``signups`` table.

``double_opt_in`` and ``public`` default to false for existing lists, so nothing changes until a
tenant makes a list public; ``public_id`` is filled when a list is made public (or created).
Pending contacts need no schema change: ``contacts.status`` is a string, ``pending`` a new value.

Revision ID: 0022_signup
Revises: 0021_privacy
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, Json, UTCDateTime

revision: str = "0022_signup"
# Written while 0016-0021 were in progress elsewhere: the lead re-chains this to the newest one.
down_revision: str | None = "0021_privacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch rebuild: on SQLite that would drop AUTOINCREMENT (0009).
    op.add_column(
        "lists",
        sa.Column("double_opt_in", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "lists", sa.Column("public", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("lists", sa.Column("public_id", sa.String(length=32), nullable=True))
    op.create_index("uq_lists_public_id", "lists", ["public_id"], unique=True)
    op.create_table(
        "signups",
        sa.Column("list_id", BigId, nullable=False),
        sa.Column("contact_id", BigId, nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("message_id", BigId, nullable=True),
        sa.Column("name", sa.String(length=300), nullable=True),
        sa.Column("categories", Json, nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_signups_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["list_id"], ["lists.id"], name=op.f("fk_signups_list_id_lists"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_signups_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("list_id", "contact_id", name=op.f("pk_signups")),
    )
    op.create_index("ix_signups_tenant_message", "signups", ["tenant_id", "message_id"])
    op.create_index("ix_signups_created_at", "signups", ["created_at"])
    op.create_index("ix_signups_contact", "signups", ["contact_id"])


def downgrade() -> None:
    op.drop_index("ix_signups_contact", table_name="signups")
    op.drop_index("ix_signups_created_at", table_name="signups")
    op.drop_index("ix_signups_tenant_message", table_name="signups")
    op.drop_table("signups")
    op.drop_index("uq_lists_public_id", table_name="lists")
    for column in ("public_id", "public", "double_opt_in"):
        op.drop_column("lists", column)
