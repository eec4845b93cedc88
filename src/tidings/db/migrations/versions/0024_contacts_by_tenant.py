"""``ix_contacts_tenant_id`` on ``contacts (tenant_id, id)``, on SQLite: a tenant's contacts in
id order.

Every keyset page over a tenant's contacts (``GET /v1/contacts``, the dashboard's list, the
export) asks for ``tenant_id = ? AND id > ? ORDER BY id LIMIT n``. The only index starting with
``tenant_id`` was ``(tenant_id, status, id)``, which gives that order only for one status: SQLite
read every contact of the tenant through it and sorted them for each page, so a page cost 0.6-0.9 s
at 1M contacts and an export of 1M took 8 minutes (a quadratic walk). With this index a page is
one index range (2.6 ms).

Not on PostgreSQL: it walks the primary key for those pages, and there the index did harm. Right
after a bulk import, before autovacuum has analysed ``contacts``, the planner estimated one row
for this index's range and drove a fan-out chunk's semi-join from it, re-reading the list's members
for each contact: one 20,000-contact chunk took 93 s instead of 56 ms (found by
``bench/bench_delivery.py``).

Revision ID: 0024_contacts_by_tenant
Revises: 0023_provider_events
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0024_contacts_by_tenant"
down_revision: str | None = "0023_provider_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # about a second per million contacts
        op.execute("CREATE INDEX IF NOT EXISTS ix_contacts_tenant_id ON contacts (tenant_id, id)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP INDEX IF EXISTS ix_contacts_tenant_id")
