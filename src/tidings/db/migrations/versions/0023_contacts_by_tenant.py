"""``ix_contacts_tenant_id`` on ``contacts (tenant_id, id)``: a tenant's contacts in id order.

Every keyset page over a tenant's contacts (``GET /v1/contacts``, the dashboard's list, the
export) asks for ``tenant_id = ? AND id > ? ORDER BY id LIMIT n``. The only index starting with
``tenant_id`` was ``(tenant_id, status, id)``, which gives that order only for one status: SQLite
read every contact of the tenant through it and sorted them for each page, so a page cost 0.6-0.9 s
at 1M contacts and an export of 1M took 8 minutes (a quadratic walk). With this index a page is
one index range (2.6 ms). PostgreSQL usually walked the primary key instead, which reads other
tenants' rows on the way; this index serves it too.

Revision ID: 0023_contacts_by_tenant
Revises: 0022_signup
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0023_contacts_by_tenant"
down_revision: str | None = "0022_signup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # CONCURRENTLY would not block writers on a big table, but cannot run in the migration's
    # transaction; a site with millions of contacts can create it by hand first (same name: IF NOT
    # EXISTS then skips it). The build takes about a second per million contacts.
    op.execute("CREATE INDEX IF NOT EXISTS ix_contacts_tenant_id ON contacts (tenant_id, id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_contacts_tenant_id")
