"""The running message counts (migration 0014) always equal a count of ``messages`` itself:
whatever writes the table, from many connections at once, committed or rolled back, and after
the shards of closed connections are folded."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, event, func, insert, select, text, update
from sqlalchemy.orm import Session

from tests.conftest import TenantKeys
from tidings.db.engine import transaction
from tidings.db.models import Message, MessageCount, table
from tidings.domain import MessageStatus
from tidings.queue.status import fold_counts, oldest_waiting, queue_overview
from tidings.runtime import Runtime

NOW = datetime(2030, 5, 1, 9, 0, tzinfo=UTC)
STATUSES = [s.value for s in MessageStatus]


def counted(session: Session) -> dict[tuple[int, str], int]:
    rows = session.execute(
        select(MessageCount.tenant_id, MessageCount.status, func.sum(MessageCount.count))
        .group_by(MessageCount.tenant_id, MessageCount.status)
        .having(func.sum(MessageCount.count) != 0)
    )
    return {(tenant, status): int(count) for tenant, status, count in rows}


def actual(session: Session) -> dict[tuple[int, str], int]:
    rows = session.execute(
        select(Message.tenant_id, Message.status, func.count()).group_by(
            Message.tenant_id, Message.status
        )
    )
    return {(tenant, status): int(count) for tenant, status, count in rows}


def add_messages(session: Session, tenant_id: int, count: int, status: str = "queued") -> None:
    session.execute(
        insert(table(Message)),
        [
            {
                "tenant_id": tenant_id,
                "to_address": f"r{i}@example.org",
                "subject": "s",
                "text": "t",
                "status": status,
                "priority": 0,
                "attempts": 0,
                "not_before": NOW,
                "expires_at": NOW,
                "created_at": NOW,
                "updated_at": NOW,
            }
            for i in range(count)
        ],
    )


def test_counts_follow_every_kind_of_write_from_many_connections(
    runtime: Runtime, tenant_factory: Callable[[str], TenantKeys]
) -> None:
    tenants = [tenant_factory(name).tenant_id for name in ("acme", "globex")]
    with transaction(runtime.sessions) as session:
        for tenant_id in tenants:
            add_messages(session, tenant_id, 300)
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        chance = random.Random(seed)
        try:
            for step in range(40):
                with runtime.sessions() as session:
                    tenant_id = chance.choice(tenants)
                    # Each thread its own messages (no deadlock between the test's own writes);
                    # the counter rows are what they all share.
                    ids = select(Message.id).where(
                        Message.tenant_id == tenant_id, Message.id % len(threads) == seed
                    )
                    picked = [i for i in session.scalars(ids) if chance.random() < 0.1]
                    kind = step % 4
                    if kind == 0:  # many rows to one status: a claim, a cancel
                        session.execute(
                            update(Message)
                            .where(Message.id.in_(picked))
                            .values(status=chance.choice(STATUSES))
                        )
                    elif kind == 1:  # one statement per row: outcomes written one by one
                        for message_id in picked[:20]:
                            session.execute(
                                update(Message)
                                .where(Message.id == message_id)
                                .values(status=chance.choice(STATUSES))
                            )
                    elif kind == 2:
                        session.execute(delete(Message).where(Message.id.in_(picked[:5])))
                        add_messages(session, tenant_id, 5, chance.choice(STATUSES))
                        session.flush()
                    else:  # a write that changes no status still counts nothing
                        session.execute(
                            update(Message).where(Message.id.in_(picked)).values(updated_at=NOW)
                        )
                    if chance.random() < 0.25:
                        session.rollback()
                    else:
                        session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with runtime.sessions() as session:
        expected = actual(session)
        assert counted(session) == expected
    runtime.engine.dispose()  # every connection that wrote a shard is gone
    with transaction(runtime.sessions) as session:
        fold_counts(session=session)
    with runtime.sessions() as session:
        assert counted(session) == expected
        shards = set(session.scalars(select(MessageCount.shard)))
        zero = session.scalar(select(func.count()).where(MessageCount.count == 0))
    assert shards == {0}
    assert zero == 0


def test_a_scrape_reads_the_counts_not_the_history(runtime: Runtime, acme: TenantKeys) -> None:
    """The overview's figures are the counters': a count written behind the triggers' back shows
    (so no query of ``messages`` answered), while the backlog is the queue's own."""
    with transaction(runtime.sessions) as session:
        add_messages(session, acme.tenant_id, 3)
        add_messages(session, acme.tenant_id, 2, "sent")
        session.execute(
            text(
                "UPDATE message_counts SET count = count + 1000 "
                "WHERE tenant_id = :t AND status = 'sent'"
            ),
            {"t": acme.tenant_id},
        )
    with runtime.sessions() as session:
        overview = queue_overview(session=session, now=NOW)
    [tenant] = overview.tenants
    assert tenant.counts == {"queued": 3, "sent": 1002}
    assert tenant.ready == 3
    assert tenant.oldest_waiting_since == NOW


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_backlog_is_read_from_the_claim_index_in_any_plan(runtime: Runtime) -> None:
    """The ready count and the oldest wait must come from ``ix_messages_claim`` (the queue alone),
    even under a generic plan, as psycopg's prepared statements get after a few executions: a
    bound ``status`` parameter cannot be matched to the index's ``status = 'queued'`` predicate
    there, and the scrape would walk the whole history."""
    captured: list[tuple[str, dict[str, Any]]] = []

    def capture(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if "FROM messages" in statement:
            captured.append((statement, parameters))

    event.listen(runtime.engine, "before_cursor_execute", capture)
    try:
        with runtime.sessions() as session:
            queue_overview(session=session, now=NOW)
            oldest_waiting(session=session, now=NOW)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", capture)
    assert len(captured) == 2
    with runtime.engine.connect() as connection:
        connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        connection.exec_driver_sql("SET enable_seqscan = off")
        for number, (statement, parameters) in enumerate(captured):
            prepared, names = _numbered(statement)
            connection.exec_driver_sql(f"PREPARE probe{number} AS {prepared}")
            arguments = ", ".join(_literal(parameters[name]) for name in names)
            plan = "\n".join(
                row[0]
                for row in connection.exec_driver_sql(f"EXPLAIN EXECUTE probe{number}({arguments})")
            )
            assert "ix_messages_claim" in plan, plan


def _numbered(statement: str) -> tuple[str, list[str]]:
    """psycopg's ``%(name)s`` placeholders as ``$1, $2 …`` (for PREPARE), and their names."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        names.append(match[1])
        return f"${len(names)}"

    return re.sub(r"%\((\w+)\)s", placeholder, statement), names


def _literal(value: object) -> str:
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    assert isinstance(value, int), value
    return str(value)
