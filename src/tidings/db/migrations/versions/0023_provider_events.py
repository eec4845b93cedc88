"""What became of a message after it left: ``messages.delivered_at``, ``bounce`` (hard, soft) and
``complained_at``, and ``campaign_results``, each campaign's count of delivered, hard-bounced,
soft-bounced, complained and unconfirmed messages (``RESULTS``).

``campaign_results`` is kept by the same ``messages`` triggers as ``campaign_counts`` (0014/0019),
so every path that records a result (the worker's outcomes, provider webhooks, bounce reports,
purges) moves the counts in its own transaction and statistics read a few rows per campaign.
PostgreSQL: the statement-level trigger functions are replaced (one more upsert from the same
transition tables, sharded by backend). SQLite: three more row triggers beside 0019's, firing only
when a result of the row changes. A later migration that rebuilds ``messages`` on SQLite must call
0019's ``create_sqlite_triggers`` and this module's.

The columns are nullable: plain ``ADD COLUMN``, no rebuild of ``messages`` (which would drop its
triggers on SQLite), no rewrite on PostgreSQL. Messages sent before this migration count as
delivered when sent (``delivered_at = sent_at``), which is what the statistics said until now.

Revision ID: 0023_provider_events
Revises: 0022_signup
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, UTCDateTime

revision: str = "0023_provider_events"
down_revision: str | None = "0022_signup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Each result and when a message row has it (``{r}``: the row). A message may have several
#: (delivered and complained); ``unconfirmed``: accepted by a provider that confirms deliveries
#: later, and neither confirmed nor bounced yet.
RESULTS = {
    "delivered": "{r}.delivered_at IS NOT NULL",
    "bounced_hard": "{r}.bounce = 'hard'",
    "bounced_soft": "{r}.bounce = 'soft'",
    "complained": "{r}.complained_at IS NOT NULL",
    "unconfirmed": "{r}.status = 'sent' AND {r}.delivered_at IS NULL AND {r}.bounce IS NULL",
}

#: Only rows that can have a result: a fan-out's queued rows are passed over at once.
_PG_ROWS = (
    "SELECT campaign_id, status, delivered_at, bounce, complained_at, {delta} AS delta FROM {t} "
    "WHERE campaign_id IS NOT NULL AND (status = 'sent' OR delivered_at IS NOT NULL "
    "OR bounce IS NOT NULL OR complained_at IS NOT NULL)"
)
#: One pass over the changed rows sums each result per campaign (``FILTER``), then the few sums
#: are unfolded into rows: cheaper than unfolding every changed row first.
_PG_RESULTS = """
    INSERT INTO campaign_results (campaign_id, result, shard, count)
    SELECT s.campaign_id, v.result, pg_backend_pid(), v.n FROM (
        SELECT r.campaign_id, {sums} FROM ({rows}) AS r GROUP BY r.campaign_id
    ) AS s
    CROSS JOIN LATERAL (VALUES {values}) AS v(result, n)
    WHERE v.n <> 0
    ON CONFLICT (campaign_id, result, shard)
    DO UPDATE SET count = campaign_results.count + EXCLUDED.count;
"""
_PG_SUMS = ", ".join(
    f"sum(r.delta) FILTER (WHERE {cond.format(r='r')}) AS {name}" for name, cond in RESULTS.items()
)
_PG_VALUES = ", ".join(f"('{name}', s.{name})" for name in RESULTS)
_PG_NEW = _PG_ROWS.format(delta=1, t="new_rows")
_PG_OLD = _PG_ROWS.format(delta=-1, t="old_rows")
_PG_ADDED = {
    "tidings_count_inserted": _PG_NEW,
    "tidings_count_deleted": _PG_OLD,
    "tidings_count_updated": f"{_PG_NEW} UNION ALL {_PG_OLD}",
}
_TRUNCATED = (
    "DELETE FROM message_counts; DELETE FROM campaign_counts; DELETE FROM campaign_results;"
)


def _sqlite_has(row: str, cond: str) -> str:
    return f"coalesce(({cond.format(r=row)}), 0)"


_SQLITE_ADD = (
    "INSERT INTO campaign_results (campaign_id, result, shard, count) "
    "SELECT NEW.campaign_id, result, 0, 1 FROM ("
    + " UNION ALL ".join(
        f"SELECT '{name}' AS result WHERE {_sqlite_has('NEW', cond)}"
        for name, cond in RESULTS.items()
    )
    # WHERE: SQLite parses an upsert of INSERT … SELECT only with a WHERE clause.
    + ") WHERE NEW.campaign_id IS NOT NULL "
    "ON CONFLICT (campaign_id, result, shard) DO UPDATE SET count = count + 1;"
)
_SQLITE_REMOVE = (
    "UPDATE campaign_results SET count = count - 1 "
    "WHERE campaign_id = OLD.campaign_id AND shard = 0 AND result IN ("
    + ", ".join(
        f"CASE WHEN {_sqlite_has('OLD', cond)} THEN '{name}' END" for name, cond in RESULTS.items()
    )
    + ");"
)


def _any(row: str) -> str:
    return " OR ".join(_sqlite_has(row, cond) for cond in RESULTS.values())


_CHANGED = " OR ".join(
    ["OLD.campaign_id IS NOT NEW.campaign_id"]
    + [f"{_sqlite_has('OLD', cond)} <> {_sqlite_has('NEW', cond)}" for cond in RESULTS.values()]
)
SQLITE_TRIGGERS = {
    "messages_results_insert": (
        f"AFTER INSERT ON messages WHEN {_any('NEW')} BEGIN {_SQLITE_ADD} END"
    ),
    "messages_results_delete": (
        f"AFTER DELETE ON messages WHEN {_any('OLD')} BEGIN {_SQLITE_REMOVE} END"
    ),
    "messages_results_update": (
        "AFTER UPDATE OF campaign_id, status, delivered_at, bounce, complained_at ON messages "
        f"WHEN {_CHANGED} BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END"
    ),
}


def _tracking_0019() -> ModuleType:
    return importlib.import_module("tidings.db.migrations.versions.0019_tracking")


def create_sqlite_triggers() -> None:
    for name, body in SQLITE_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def postgresql_functions() -> dict[str, str]:
    """0019's trigger bodies, each followed by the upsert of ``campaign_results``."""
    earlier: dict[str, str] = _tracking_0019().POSTGRESQL_FUNCTIONS
    return {
        name: body + _PG_RESULTS.format(rows=_PG_ADDED[name], sums=_PG_SUMS, values=_PG_VALUES)
        for name, body in earlier.items()
    }


def upgrade() -> None:
    for name in ("delivered_at", "complained_at"):
        op.add_column("messages", sa.Column(name, UTCDateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("bounce", sa.String(length=4), nullable=True))
    op.create_table(
        "campaign_results",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "result", "shard", name="pk_campaign_results"),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        # Until commit: no message changes between the new functions and the fill below.
        op.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
    # Before the new triggers: what the statistics said so far (delivered = sent, bounces and
    # complaints from their events) stays true.
    op.execute(
        "UPDATE messages SET delivered_at = coalesce(sent_at, updated_at) WHERE status = 'sent'"
    )
    for column, value, event in (
        ("bounce", "'hard'", "bounced"),
        ("complained_at", "updated_at", "complained"),
    ):
        op.execute(
            f"UPDATE messages SET {column} = {value} WHERE id IN "
            f"(SELECT message_id FROM events WHERE type = '{event}' AND message_id IS NOT NULL)"
        )
    if postgresql:
        tracking = _tracking_0019()
        tracking._replace_functions(postgresql_functions(), _TRUNCATED)
    else:
        create_sqlite_triggers()
    for name, cond in RESULTS.items():
        op.execute(
            "INSERT INTO campaign_results (campaign_id, result, shard, count) "
            f"SELECT campaign_id, '{name}', 0, count(*) FROM messages "
            f"WHERE campaign_id IS NOT NULL AND {cond.format(r='messages')} GROUP BY campaign_id"
        )


def downgrade() -> None:
    tracking = _tracking_0019()
    if op.get_bind().dialect.name == "postgresql":
        tracking._replace_functions(
            tracking.POSTGRESQL_FUNCTIONS,
            "DELETE FROM message_counts; DELETE FROM campaign_counts;",
        )
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("campaign_results")
    # Plain ``DROP COLUMN`` (SQLite 3.35+), not a batch rebuild: rebuilding ``messages`` would drop
    # its counting triggers with the old table.
    for name in ("complained_at", "bounce", "delivered_at"):
        op.execute(f"ALTER TABLE messages DROP COLUMN {name}")
