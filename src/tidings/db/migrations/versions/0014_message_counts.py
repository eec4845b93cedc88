"""Running message counts by tenant and status, kept by triggers in the transactions that write
``messages``, so that ``/metrics`` reads a few dozen rows instead of counting the whole history.

Why triggers rather than counts bumped by the code: every path that writes a message's status
(claims, outcomes, the reaper, cancels, fan-out, erasure, a ``DELETE`` typed by an operator, a
tenant deleted by cascade) is counted, with no path to forget, and the count commits or rolls
back with the write that caused it. It cannot drift from ``messages``.

* PostgreSQL: statement-level triggers with transition tables, so a claim or an outcome batch of
  400 rows costs one grouped ``INSERT … ON CONFLICT`` rather than 400. Each connection writes its
  own *shard* (``pg_backend_pid()``): two workers recording outcomes at once never wait on one
  hot counter row. A reader sums the shards; ``queue.status.fold_counts`` moves the shards of
  connections that are gone into shard 0 now and then, so the table stays small.
* SQLite: row triggers on shard 0 (one writer at a time: there is no contention to spread).

No foreign key, as ``messages`` has none (0005): a counter row is written in the hottest
transactions there are. Readers join ``tenants``.

On SQLite a later migration that rebuilds ``messages`` (Alembic's batch "recreate") drops these
triggers with the old table: it must create them again (``create_sqlite_triggers`` of 0019, whose
triggers also keep ``campaign_counts``).

The counts are filled from ``messages`` after the triggers exist, in the same transaction (on
PostgreSQL ``CREATE TRIGGER`` locks out writers until commit, so nothing is counted twice or lost).

Revision ID: 0014_message_counts
Revises: 0013_reminders
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId

revision: str = "0014_message_counts"
down_revision: str | None = "0013_reminders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPSERT = """
    INSERT INTO message_counts (tenant_id, status, shard, count)
    SELECT tenant_id, status, pg_backend_pid(), sum(delta) FROM ({rows}) AS changed
    GROUP BY tenant_id, status HAVING sum(delta) <> 0
    ON CONFLICT (tenant_id, status, shard)
    DO UPDATE SET count = message_counts.count + EXCLUDED.count;
"""
_NEW = "SELECT tenant_id, status, 1 AS delta FROM new_rows"
_OLD = "SELECT tenant_id, status, -1 AS delta FROM old_rows"

POSTGRESQL_FUNCTIONS = {
    "tidings_count_inserted": _UPSERT.format(rows=_NEW),
    "tidings_count_deleted": _UPSERT.format(rows=_OLD),
    "tidings_count_updated": _UPSERT.format(rows=f"{_NEW} UNION ALL {_OLD}"),
}
# (trigger, event, transition tables, function)
POSTGRESQL_TRIGGERS = (
    ("messages_count_insert", "INSERT", "NEW TABLE AS new_rows", "tidings_count_inserted"),
    ("messages_count_delete", "DELETE", "OLD TABLE AS old_rows", "tidings_count_deleted"),
    (
        "messages_count_update",
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "tidings_count_updated",
    ),
)

_SQLITE_ADD = (
    "INSERT INTO message_counts (tenant_id, status, shard, count) "
    "VALUES (NEW.tenant_id, NEW.status, 0, 1) "
    "ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = count + 1;"
)
_SQLITE_REMOVE = (
    "UPDATE message_counts SET count = count - 1 "
    "WHERE tenant_id = OLD.tenant_id AND status = OLD.status AND shard = 0;"
)
SQLITE_TRIGGERS = {
    "messages_count_insert": f"AFTER INSERT ON messages BEGIN {_SQLITE_ADD} END",
    "messages_count_delete": f"AFTER DELETE ON messages BEGIN {_SQLITE_REMOVE} END",
    "messages_count_update": (
        "AFTER UPDATE OF tenant_id, status ON messages "
        "WHEN OLD.status IS NOT NEW.status OR OLD.tenant_id IS NOT NEW.tenant_id "
        f"BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END"
    ),
}


def create_sqlite_triggers() -> None:
    for name, body in SQLITE_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def upgrade() -> None:
    op.create_table(
        "message_counts",
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "status", "shard", name="pk_message_counts"),
    )
    if op.get_bind().dialect.name == "postgresql":
        for function, body in POSTGRESQL_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {body} RETURN NULL; END $$"
            )
        for trigger, event, tables, function in POSTGRESQL_TRIGGERS:
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} ON messages REFERENCING {tables} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            )
        op.execute(
            "CREATE FUNCTION tidings_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN DELETE FROM message_counts; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER messages_count_truncate AFTER TRUNCATE ON messages "
            "FOR EACH STATEMENT EXECUTE FUNCTION tidings_count_truncated()"
        )
    else:
        create_sqlite_triggers()
    op.execute(
        "INSERT INTO message_counts (tenant_id, status, shard, count) "
        "SELECT tenant_id, status, 0, count(*) FROM messages GROUP BY tenant_id, status"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger, _, _, _ in POSTGRESQL_TRIGGERS:
            op.execute(f"DROP TRIGGER {trigger} ON messages")
        op.execute("DROP TRIGGER messages_count_truncate ON messages")
        for function in (*POSTGRESQL_FUNCTIONS, "tidings_count_truncated"):
            op.execute(f"DROP FUNCTION {function}()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("message_counts")
