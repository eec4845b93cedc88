"""Open and click tracking: the settings and overrides that turn it on, the raw hits, and each
campaign's summary (totals, links, a per-minute timeline) that statistics read instead of the hits.

Campaign statistics also need each campaign's messages by status (sent, failed ...) without
counting a million rows: ``campaign_counts`` is kept by the triggers of 0014, which now also add
each changed row's campaign (same transition tables on PostgreSQL, one more statement in the same
row triggers on SQLite; sharded by backend like ``message_counts``). The trigger functions are
replaced, not added: one statement-level trigger per event still serves both tables. On SQLite a
later migration that rebuilds ``messages`` must call this module's ``create_sqlite_triggers``
(not 0014's any more). The counts are filled from ``messages`` with writers locked out.

Every column added to an existing table is nullable or has a server default: ``ADD COLUMN``
without a table rebuild on SQLite (``messages`` keeps its 0014 triggers), without a rewrite on
PostgreSQL.

Revision ID: 0019_tracking
Revises: 0018_message_features
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tidings.db.types import BigId, UTCDateTime

revision: str = "0019_tracking"
down_revision: str | None = "0018_message_features"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNT = sa.BigInteger()

_MESSAGE_UPSERT = """
    INSERT INTO message_counts (tenant_id, status, shard, count)
    SELECT tenant_id, status, pg_backend_pid(), sum(delta) FROM ({rows}) AS changed
    GROUP BY tenant_id, status HAVING sum(delta) <> 0
    ON CONFLICT (tenant_id, status, shard)
    DO UPDATE SET count = message_counts.count + EXCLUDED.count;
"""
_CAMPAIGN_UPSERT = """
    INSERT INTO campaign_counts (campaign_id, status, shard, count)
    SELECT campaign_id, status, pg_backend_pid(), sum(delta) FROM ({rows}) AS changed
    WHERE campaign_id IS NOT NULL
    GROUP BY campaign_id, status HAVING sum(delta) <> 0
    ON CONFLICT (campaign_id, status, shard)
    DO UPDATE SET count = campaign_counts.count + EXCLUDED.count;
"""
_NEW = "SELECT tenant_id, campaign_id, status, 1 AS delta FROM new_rows"
_OLD = "SELECT tenant_id, campaign_id, status, -1 AS delta FROM old_rows"
_BOTH = f"{_NEW} UNION ALL {_OLD}"
POSTGRESQL_FUNCTIONS = {
    name: _MESSAGE_UPSERT.format(rows=rows) + _CAMPAIGN_UPSERT.format(rows=rows)
    for name, rows in (
        ("tidings_count_inserted", _NEW),
        ("tidings_count_deleted", _OLD),
        ("tidings_count_updated", _BOTH),
    )
}
_TRUNCATED = "DELETE FROM message_counts; DELETE FROM campaign_counts;"

_SQLITE_ADD = (
    "INSERT INTO message_counts (tenant_id, status, shard, count) "
    "VALUES (NEW.tenant_id, NEW.status, 0, 1) "
    "ON CONFLICT (tenant_id, status, shard) DO UPDATE SET count = count + 1; "
    # WHERE: SQLite parses an upsert of INSERT … SELECT only with a WHERE clause.
    "INSERT INTO campaign_counts (campaign_id, status, shard, count) "
    "SELECT NEW.campaign_id, NEW.status, 0, 1 WHERE NEW.campaign_id IS NOT NULL "
    "ON CONFLICT (campaign_id, status, shard) DO UPDATE SET count = count + 1;"
)
_SQLITE_REMOVE = (
    "UPDATE message_counts SET count = count - 1 "
    "WHERE tenant_id = OLD.tenant_id AND status = OLD.status AND shard = 0; "
    "UPDATE campaign_counts SET count = count - 1 "
    "WHERE campaign_id = OLD.campaign_id AND status = OLD.status AND shard = 0;"
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


def _counting_0014() -> object:
    return importlib.import_module("tidings.db.migrations.versions.0014_message_counts")


def create_sqlite_triggers() -> None:
    for name, body in SQLITE_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def _replace_functions(functions: dict[str, str], truncated: str) -> None:
    for function, body in functions.items():
        op.execute(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body} RETURN NULL; END $$"
        )
    op.execute(
        "CREATE OR REPLACE FUNCTION tidings_count_truncated() RETURNS trigger LANGUAGE plpgsql "
        f"AS $$ BEGIN {truncated} RETURN NULL; END $$"
    )


def _count_campaigns() -> None:
    """``campaign_counts`` from ``messages``, triggers in place and writers locked out."""
    op.create_table(
        "campaign_counts",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "status", "shard", name="pk_campaign_counts"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Until commit: no message changes between the new functions and the fill below.
        op.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
        _replace_functions(POSTGRESQL_FUNCTIONS, _TRUNCATED)
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
        create_sqlite_triggers()
    op.execute(
        "INSERT INTO campaign_counts (campaign_id, status, shard, count) "
        "SELECT campaign_id, status, 0, count(*) FROM messages WHERE campaign_id IS NOT NULL "
        "GROUP BY campaign_id, status"
    )


def _counts(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(name, _COUNT, nullable=False) for name in names]


def upgrade() -> None:
    _count_campaigns()
    with op.batch_alter_table("tenant_settings") as batch_op:
        for name in ("track_opens", "track_clicks"):
            batch_op.add_column(
                sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())
            )
    for table in ("campaigns", "messages"):
        with op.batch_alter_table(table) as batch_op:
            for name in ("track_opens", "track_clicks"):
                batch_op.add_column(sa.Column(name, sa.Boolean(), nullable=True))
    op.create_table(
        "tracking_hits",
        sa.Column("id", BigId, sa.Identity(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("campaign_id", BigId, nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("link_index", sa.Integer(), nullable=True),
        sa.Column("machine", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("network", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracking_hits"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tracking_hits_message", "tracking_hits", ["message_id", "id"])
    op.create_index("ix_tracking_hits_created", "tracking_hits", ["created_at"])
    op.create_table(
        "campaign_engagement",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        *_counts(
            "opens_unique",
            "opens_total",
            "opens_machine",
            "clicks_unique",
            "clicks_total",
            "clicks_machine",
            "unsubscribes",
        ),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", name="pk_campaign_engagement"),
    )
    op.create_table(
        "campaign_links",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("link_index", sa.Integer(), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        *_counts("clicks_unique", "clicks_total", "clicks_machine"),
        sa.PrimaryKeyConstraint("campaign_id", "link_index", name="pk_campaign_links"),
    )
    op.create_table(
        "campaign_timeline",
        sa.Column("campaign_id", BigId, nullable=False),
        sa.Column("minute", UTCDateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        *_counts("opens", "clicks", "opens_machine", "clicks_machine"),
        sa.PrimaryKeyConstraint("campaign_id", "minute", name="pk_campaign_timeline"),
    )


def downgrade() -> None:
    earlier = _counting_0014()
    if op.get_bind().dialect.name == "postgresql":
        _replace_functions(
            earlier.POSTGRESQL_FUNCTIONS,  # type: ignore[attr-defined]
            "DELETE FROM message_counts;",
        )
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
        earlier.create_sqlite_triggers()  # type: ignore[attr-defined]
    op.drop_table("campaign_counts")
    op.drop_table("campaign_timeline")
    op.drop_table("campaign_links")
    op.drop_table("campaign_engagement")
    op.drop_index("ix_tracking_hits_created", table_name="tracking_hits")
    op.drop_index("ix_tracking_hits_message", table_name="tracking_hits")
    op.drop_table("tracking_hits")
    # Plain ``DROP COLUMN`` (SQLite 3.35+), not a batch rebuild: rebuilding ``messages`` would drop
    # the 0014 counting triggers with the old table.
    for table in ("messages", "campaigns", "tenant_settings"):
        for name in ("track_clicks", "track_opens"):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
