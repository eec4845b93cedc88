"""Throttle state for exact limits: one JSON ``window_state`` per throttle row replaces the GCRA
``tat_*`` columns.

The per-second limit keeps a GCRA (without burst) and its theoretical arrival time carries over.
The longer windows become sliding counts (``delivery/throttle.py``), which a TAT cannot be turned
into: they are rebuilt from what was sent, each message counted in the bucket of its ``sent_at``
(recorded after the message arrived, so never too early). A tenant that had used its day's limit
before the upgrade does not get a second one after it.

Revision ID: 0010_exact_throttles
Revises: 0009
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

from tidings.db.types import Json

revision: str = "0010_exact_throttles"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The sliding windows, as ``delivery/throttle.py`` stores them at this revision.
WINDOW_SECONDS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
BUCKETS = 100
JITTER_SHARE = 0.001


def upgrade() -> None:
    for table in ("throttles", "domain_throttles"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("window_state", Json, nullable=False, server_default=sa.text("'{}'"))
            )
    connection = op.get_bind()
    now = time.time()
    throttles = connection.execute(
        sa.text(
            "SELECT tenant_id, per_second, per_minute, per_hour, per_day, tat_second "
            "FROM throttles WHERE enabled"
        )
    ).all()
    for row in throttles:
        state: dict[str, Any] = {}
        if row.per_second is not None:
            # Spacing 0 matches no spacing: no holes are carried over, only the next slot.
            state["second"] = {"tat": row.tat_second, "spacing": 0.0, "holes": []}
        for name, limit in (
            ("minute", row.per_minute),
            ("hour", row.per_hour),
            ("day", row.per_day),
        ):
            if limit is not None:
                state[name] = _counted(
                    connection,
                    "SELECT sent_at FROM messages WHERE tenant_id = :tenant AND sent_at >= :since",
                    {"tenant": row.tenant_id},
                    WINDOW_SECONDS[name],
                    now,
                )
        _store(connection, "throttles", "tenant_id = :key", row.tenant_id, state)
    domains = connection.execute(
        sa.text("SELECT id, tenant_id, domain, per_minute, per_hour FROM domain_throttles")
    ).all()
    for row in domains:
        state = {}
        for name, limit in (("minute", row.per_minute), ("hour", row.per_hour)):
            if limit is not None:
                state[name] = _counted(
                    connection,
                    "SELECT sent_at FROM messages WHERE tenant_id = :tenant AND sent_at >= :since"
                    " AND lower(to_address) LIKE :pattern",
                    {"tenant": row.tenant_id, "pattern": f"%@{row.domain}"},
                    WINDOW_SECONDS[name],
                    now,
                )
        _store(connection, "domain_throttles", "id = :key", row.id, state)
    for table, columns in (
        ("throttles", ("tat_second", "tat_minute", "tat_hour", "tat_day")),
        ("domain_throttles", ("tat_minute", "tat_hour")),
    ):
        with _rebuilt(table) as batch_op:
            batch_op.alter_column("window_state", server_default=None)
            for column in columns:
                batch_op.drop_column(column)


@contextmanager
def _rebuilt(table: str) -> Iterator[BatchOperations]:
    """``batch_alter_table``, keeping what 0009 gave SQLite's ``domain_throttles``: AUTOINCREMENT
    and its counter (a rebuilt table would start again after its largest remaining id)."""
    connection = op.get_bind()
    if connection.dialect.name != "sqlite" or table != "domain_throttles":
        with op.batch_alter_table(table, schema=None) as batch_op:
            yield batch_op
        return
    seq = connection.execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = :n"), {"n": table}
    ).scalar()
    with op.batch_alter_table(
        table, schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        yield batch_op
    connection.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :n"), {"n": table})
    if seq is not None:
        connection.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:n, :seq)"),
            {"n": table, "seq": seq},
        )


def _counted(
    connection: sa.Connection, query: str, params: dict[str, Any], seconds: float, now: float
) -> dict[str, Any]:
    """A sliding window's state holding every message sent in its last ``W + J``."""
    width = seconds / BUCKETS
    since = datetime.fromtimestamp(now - seconds * (1 + JITTER_SHARE) - width, UTC)
    if connection.dialect.name == "sqlite":  # naive UTC text, as models' UTCDateTime stores it
        since_param: Any = since.strftime("%Y-%m-%d %H:%M:%S.%f")
    else:
        since_param = since
    buckets: Counter[int] = Counter()
    for (sent_at,) in connection.execute(sa.text(query), {**params, "since": since_param}):
        moment = datetime.fromisoformat(sent_at) if isinstance(sent_at, str) else sent_at
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        buckets[math.floor(moment.timestamp() / width)] += 1
    if not buckets:
        return {"width": width, "first": 0, "counts": []}
    first = min(buckets)
    return {
        "width": width,
        "first": first,
        "counts": [buckets[i] for i in range(first, max(buckets) + 1)],
    }


def _store(
    connection: sa.Connection, table: str, where: str, key: int, state: dict[str, Any]
) -> None:
    statement = sa.text(f"UPDATE {table} SET window_state = :state WHERE {where}").bindparams(
        sa.bindparam("state", type_=Json)
    )
    connection.execute(statement, {"state": state, "key": key})


def downgrade() -> None:
    for table, columns in (
        ("throttles", ("tat_second", "tat_minute", "tat_hour", "tat_day")),
        ("domain_throttles", ("tat_minute", "tat_hour")),
    ):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.add_column(
                    sa.Column(column, sa.Float(), nullable=False, server_default=sa.text("0"))
                )
        with _rebuilt(table) as batch_op:
            for column in columns:
                batch_op.alter_column(column, server_default=None)
            batch_op.drop_column("window_state")
