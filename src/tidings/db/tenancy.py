"""Look-ups by ``(tenant_id, id)``: a row named by an id is only ever taken for its own tenant.

The SQL asks for the ids alone (``ids``), so that both databases read the primary key, and every
row read is kept only when its own ``(tenant_id, id)`` is one that was asked for (``owned``). Asking
for ``tenant_id = t AND id IN (...)`` in SQL reads the same, but PostgreSQL then often walks the
tenant's whole ``(tenant_id, status, id)`` index, and a row-value ``(tenant_id, id) IN (VALUES
...)`` makes SQLite scan the table: both cost the worker a third of its throughput.
"""

from __future__ import annotations

from collections.abc import Iterable

Key = tuple[int, int]  # (tenant_id, id)


def ids(keys: Iterable[Key]) -> list[int]:
    """The ids to read, in order."""
    return sorted({row_id for _, row_id in keys})


def owned(keys: Iterable[Key], tenant_id: int, row_id: int) -> bool:
    """Whether the row read, ``(tenant_id, row_id)``, is one of ``keys`` (a set is fastest)."""
    return (tenant_id, row_id) in keys
