"""Look-ups by ``(tenant_id, id)``: a row named by an id is only ever taken for its own tenant."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_


def owned(
    tenant_column: Any, id_column: Any, keys: Iterable[tuple[int, int]]
) -> ColumnElement[bool]:
    """``(tenant, id) IN keys``, written as one ``tenant = t AND id IN (...)`` per tenant.

    A row value ``(tenant_id, id) IN (VALUES ...)`` reads the same, but SQLite answers it by
    scanning the whole table; this form uses the primary key on both databases, and a batch
    rarely holds more than a few tenants.
    """
    by_tenant: defaultdict[int, set[int]] = defaultdict(set)
    for tenant_id, row_id in keys:
        by_tenant[tenant_id].add(row_id)
    return or_(
        false(),
        *(
            and_(tenant_column == tenant_id, id_column.in_(sorted(ids)))
            for tenant_id, ids in sorted(by_tenant.items())
        ),
    )
