"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from tests.conftest import PG_ADMIN_URL
from tidings.db.engine import alembic_config, make_engine, upgrade
from tidings.db.models import Base
from tidings.runtime import Runtime


def _made_on(dialect: str) -> Callable[..., bool]:
    """Alembic's comparison ignores ``ddl_if``: an index declared for PostgreSQL only (the GIN
    index of ``contacts.attributes``) is left out of the comparison on other databases."""

    def include(item: object, _name: object, _type: object, _reflected: bool, _to: object) -> bool:
        condition = getattr(item, "_ddl_if", None)
        return condition is None or condition.dialect in (None, dialect)

    return include


def test_upgrade_head_matches_the_models(runtime: Runtime) -> None:
    with runtime.engine.connect() as connection:
        include = _made_on(connection.dialect.name)
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": include}
        )
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


# -- 0009: ids are never reused ----------------------------------------------------------------

ROWS_AT_0008 = """
INSERT INTO tenants (id, name, created_at) VALUES (1, 'a', '2026-01-01 00:00:00'),
    (2, 'b', '2026-01-01 00:00:00');
INSERT INTO templates (id, tenant_id, name, subject, html, created_at, updated_at) VALUES
    (1, 1, 't1', 's', '<p>1</p>', '2026-01-01 00:00:00', '2026-01-01 00:00:00');
INSERT INTO contacts (id, tenant_id, email, attributes, status, created_at, updated_at) VALUES
    (1, 1, 'a@example.com', '{}', 'active', '2026-01-01 00:00:00', '2026-01-01 00:00:00'),
    (2, 1, 'b@example.com', '{}', 'active', '2026-01-01 00:00:00', '2026-01-01 00:00:00');
INSERT INTO lists (id, tenant_id, name, created_at) VALUES (1, 1, 'l', '2026-01-01 00:00:00');
INSERT INTO list_members (list_id, contact_id, tenant_id, added_at) VALUES
    (1, 1, 1, '2026-01-01 00:00:00'), (1, 2, 1, '2026-01-01 00:00:00');
INSERT INTO messages (id, tenant_id, contact_id, to_address, template_id, priority, status,
    not_before, expires_at, attempts, lease_expiries, created_at, updated_at) VALUES
    (1, 1, 2, 'b@example.com', 7, 5, 'failed', '2026-01-01 00:00:00', '2026-01-02 00:00:00',
     1, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00');
INSERT INTO events (id, tenant_id, message_id, contact_id, type, created_at) VALUES
    (1, 1, 9, 5, 'queued', '2026-01-01 00:00:00');
"""


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, to migrate step by step."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'steps.db'}"
        return
    request.getfixturevalue("pg_database_url")  # skips (or fails under CI) without a server
    name = f"tidings_steps_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _schema(engine: Engine) -> dict[str, object]:
    """Indexes and foreign keys of every table, as the database reports them."""
    found = inspect(engine)
    return {
        name: (
            sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in found.get_indexes(name)
            ),
            sorted(str(sorted(fk.items())) for fk in found.get_foreign_keys(name)),
        )
        for name in sorted(found.get_table_names())
    }


def _generated_ids(engine: Engine) -> set[str]:
    """The tables whose id the database generates without ever reusing one."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
            return {name for name, sql in rows if "AUTOINCREMENT" in sql}
        rows = conn.execute(
            text(
                "SELECT table_name FROM information_schema.columns WHERE column_name = 'id' "
                "AND is_identity = 'YES' AND column_default IS NULL AND table_schema = 'public'"
            )
        )
        return {name for (name,) in rows}


def test_the_models_and_the_migrated_schema_agree_on_ids_that_are_never_reused(
    runtime: Runtime,
) -> None:
    """``compare_metadata`` does not see SQLite's AUTOINCREMENT: check it (and identity) here."""
    declared = {
        t.name
        for t in Base.metadata.tables.values()
        if any(c.identity is not None for c in t.primary_key.columns)
    }
    # 0016 sender_domains, 0017 tenant_transports, 0018 attachments, 0019 tracking_hits, 0020 segments
    assert len(declared) == 20
    assert _generated_ids(runtime.engine) == declared


def test_0009_keeps_every_row_index_and_foreign_key_and_never_reuses_a_named_id(
    empty_url: str,
) -> None:
    engine = make_engine(empty_url)
    try:
        upgrade(engine, "0008")
        with engine.begin() as conn:
            for statement in ROWS_AT_0008.split(";"):
                if statement.strip():
                    conn.execute(text(statement))
            # Contact 2 (the highest id) is deleted as delete_contact does; message 1 keeps
            # naming template 7, and event 1 message 9 and contact 5, rows gone long ago.
            conn.execute(text("UPDATE messages SET contact_id = NULL WHERE contact_id = 2"))
            conn.execute(text("DELETE FROM list_members WHERE contact_id = 2"))
            conn.execute(text("DELETE FROM contacts WHERE id = 2"))
        before = _schema(engine)
        upgrade(engine, "0009")  # not head: later migrations add tables of their own
        assert _schema(engine) == before
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM list_members")).scalar() == 1
            assert conn.execute(text("SELECT email FROM contacts")).scalars().all() == [
                "a@example.com"
            ]
            assert conn.execute(text("SELECT template_id FROM messages")).scalar() == 7

            def insert(sql: str) -> int:
                return int(conn.execute(text(sql + " RETURNING id")).scalar_one())

            stamp = "'2026-01-02 00:00:00'"
            # Ids that something still names, or that a sequence handed out, come back no more.
            assert (
                insert(
                    "INSERT INTO templates (tenant_id, name, subject, html, created_at, updated_at) "
                    f"VALUES (2, 'b', 's', 'h', {stamp}, {stamp})"
                )
                == 8
            )
            assert (
                insert(
                    "INSERT INTO contacts (tenant_id, email, attributes, status, created_at, "
                    f"updated_at) VALUES (2, 'c@example.com', '{{}}', 'active', {stamp}, {stamp})"
                )
                == 6
            )
            assert (
                insert(f"INSERT INTO lists (tenant_id, name, created_at) VALUES (2, 'm', {stamp})")
                == 2
            )
        upgrade(engine)  # the later migrations, down again below
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"compare_type": True, "include_object": _made_on(conn.dialect.name)},
            )
            assert compare_metadata(context, Base.metadata) == []
        assert len(_generated_ids(engine)) == 20  # as above
        upgrade_down = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as conn:
            upgrade_down.attributes["connection"] = conn
            command.downgrade(upgrade_down, "0008")
        assert _generated_ids(engine) == set()
        assert _schema(engine) == before
    finally:
        engine.dispose()


# -- 0023: what became of the messages ----------------------------------------------------------

ROWS_AT_0022 = """
INSERT INTO tenants (id, name, created_at) VALUES (1, 'a', '2026-01-01 00:00:00');
INSERT INTO templates (id, tenant_id, name, subject, html, created_at, updated_at) VALUES
    (1, 1, 't1', 's', '<p>1</p>', '2026-01-01 00:00:00', '2026-01-01 00:00:00');
INSERT INTO campaigns (id, tenant_id, name, template_id, list_ids, contact_ids, data, status,
    recipient_count, priority, created_at) VALUES
    (1, 1, 'c', 1, '[]', '[]', '{}', 'completed', 4, 5, '2026-01-01 00:00:00');
INSERT INTO messages (id, tenant_id, campaign_id, to_address, priority, status, not_before,
    expires_at, attempts, lease_expiries, created_at, updated_at, sent_at) VALUES
    (1, 1, 1, 'a@example.com', 5, 'sent', '2026-01-01 00:00:00', '2026-01-02 00:00:00', 1, 0,
     '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:01'),
    (2, 1, 1, 'b@example.com', 5, 'sent', '2026-01-01 00:00:00', '2026-01-02 00:00:00', 1, 0,
     '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:01'),
    (3, 1, 1, 'c@example.com', 5, 'failed', '2026-01-01 00:00:00', '2026-01-02 00:00:00', 1, 0,
     '2026-01-01 00:00:00', '2026-01-01 00:00:00', NULL),
    (4, 1, 1, 'd@example.com', 5, 'queued', '2026-01-01 00:00:00', '2026-01-02 00:00:00', 0, 0,
     '2026-01-01 00:00:00', '2026-01-01 00:00:00', NULL);
INSERT INTO events (id, tenant_id, message_id, campaign_id, type, created_at) VALUES
    (1, 1, 3, 1, 'bounced', '2026-01-01 00:00:00'),
    (2, 1, 3, 1, 'bounced', '2026-01-01 00:00:00'),
    (3, 1, 2, 1, 'complained', '2026-01-01 00:00:00');
"""


def _results(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT result, sum(count) FROM campaign_results WHERE campaign_id = 1 "
                "GROUP BY result HAVING sum(count) <> 0"
            )
        )
        return {result: int(count) for result, count in rows}


def test_0023_counts_what_became_of_earlier_messages_and_then_keeps_counting(
    empty_url: str,
) -> None:
    """Sent before 0023: delivered when sent (what the figures said until then); bounces and
    complaints from their events, each message once. After it, the triggers move the counts."""
    engine = make_engine(empty_url)
    try:
        upgrade(engine, "0022_signup")
        with engine.begin() as conn:
            for statement in ROWS_AT_0022.split(";"):
                if statement.strip():
                    conn.execute(text(statement))
        upgrade(engine)
        assert _results(engine) == {"delivered": 2, "bounced_hard": 1, "complained": 1}
        with engine.begin() as conn:
            conn.execute(text("UPDATE messages SET status = 'sent' WHERE id = 4"))
            conn.execute(
                text("UPDATE messages SET delivered_at = NULL, bounce = 'soft' WHERE id = 1")
            )
        assert _results(engine) == {
            "delivered": 1,
            "bounced_hard": 1,
            "bounced_soft": 1,
            "complained": 1,
            "unconfirmed": 1,
        }
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM messages WHERE id IN (1, 2)"))
        assert _results(engine) == {"bounced_hard": 1, "unconfirmed": 1}
    finally:
        engine.dispose()


# -- 0025: a person's first open and click -----------------------------------------------------


def test_0025_fills_a_persons_first_open_and_click_from_the_hits_and_keeps_the_triggers(
    empty_url: str,
) -> None:
    engine = make_engine(empty_url)
    try:
        upgrade(engine, "0022_signup")
        stamp = "'2026-01-02 00:00:00'"
        with engine.begin() as conn:
            for message_id in (1, 2):
                conn.execute(
                    text(
                        "INSERT INTO messages (id, tenant_id, campaign_id, contact_id, to_address, "
                        "priority, status, not_before, expires_at, attempts, lease_expiries, "
                        f"created_at, updated_at) VALUES ({message_id}, 1, 3, {message_id}, "
                        f"'a@example.com', 5, 'sent', {stamp}, {stamp}, 1, 0, {stamp}, {stamp})"
                    )
                )
            for message_id, kind, machine, at in (
                (1, "open", True, "2026-01-02 00:00:01"),  # Apple's proxy, first
                (1, "open", False, "2026-01-02 00:05:00"),
                (1, "open", False, "2026-01-02 00:01:00"),  # the person's first
                (1, "click", False, "2026-01-02 00:02:00"),
                (2, "click", True, "2026-01-02 00:00:02"),  # a scanner only
            ):
                conn.execute(
                    text(
                        "INSERT INTO tracking_hits (tenant_id, message_id, campaign_id, kind, "
                        "machine, created_at) VALUES (1, :m, 3, :kind, :machine, :at)"
                    ),
                    {"m": message_id, "kind": kind, "machine": machine, "at": at},
                )
        upgrade(engine)
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT id, first_opened_at IS NOT NULL, first_clicked_at IS NOT NULL, "
                    "CAST(first_opened_at AS TEXT) FROM messages ORDER BY id"
                )
            ).all()
            assert [tuple(row[:3]) for row in found] == [(1, True, True), (2, False, False)]
            assert str(found[0][3]).startswith("2026-01-02 00:01:00")
            # No rebuild of messages: the status counts still follow its rows.
            conn.execute(text("UPDATE messages SET status = 'failed' WHERE id = 2"))
            counts = conn.execute(
                text(
                    "SELECT status, sum(count) FROM campaign_counts WHERE campaign_id = 3 "
                    "GROUP BY status HAVING sum(count) <> 0 ORDER BY status"
                )
            ).all()
            assert [tuple(row) for row in counts] == [("failed", 1), ("sent", 1)]
    finally:
        engine.dispose()
