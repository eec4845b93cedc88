"""Drop foreign keys the hot paths paid for without needing: messages.tenant_id, messages.template_id,
list_members.tenant_id.

A 100,000-recipient fan-out spent about half its time in the four foreign-key checks per message
row; an import checked three per membership. The tenant of a message is also its campaign's and
contact's; a template deleted under unsent messages fails them at render time with a clear reason.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint("fk_messages_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_constraint("fk_messages_template_id_templates", type_="foreignkey")
    with op.batch_alter_table("list_members", schema=None) as batch_op:
        batch_op.drop_constraint("fk_list_members_tenant_id_tenants", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("list_members", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_list_members_tenant_id_tenants",
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="CASCADE",
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_messages_template_id_templates",
            "templates",
            ["template_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            "fk_messages_tenant_id_tenants", "tenants", ["tenant_id"], ["id"], ondelete="CASCADE"
        )
