"""Index only the messages that have a reference, an idempotency key, a Message-ID or a provider id.

A campaign's messages have none of the four when they are queued, so every fan-out row wrote four
index entries for NULLs: about a third of the index work of a 100,000-recipient fan-out.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARTIAL = (
    ("ix_messages_tenant_reference", ("tenant_id", "reference"), False),
    ("ix_messages_message_id_header", ("message_id_header",), False),
    ("ix_messages_provider_message_id", ("provider_message_id",), False),
    ("uq_messages_tenant_idempotency", ("tenant_id", "idempotency_key"), True),
)


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint("uq_messages_tenant_idempotency", type_="unique")
        for name, _columns, _unique in _PARTIAL[:3]:
            batch_op.drop_index(name)
    for name, columns, unique in _PARTIAL:
        where = sa.text(f"{columns[-1]} IS NOT NULL")
        op.create_index(
            name,
            "messages",
            list(columns),
            unique=unique,
            postgresql_where=where,
            sqlite_where=where,
        )


def downgrade() -> None:
    for name, _columns, _unique in _PARTIAL:
        op.drop_index(name, table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        for name, columns, _unique in _PARTIAL[:3]:
            batch_op.create_index(name, list(columns))
        batch_op.create_unique_constraint(
            "uq_messages_tenant_idempotency", ["tenant_id", "idempotency_key"]
        )
