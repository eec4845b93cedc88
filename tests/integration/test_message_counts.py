"""The running message counts (migration 0014) always equal a count of ``messages`` itself:
whatever writes the table, from many connections at once, committed or rolled back, and after
the shards of closed connections are folded."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from tests.conftest import TenantKeys
from tidings.db.engine import transaction
from tidings.db.models import Message, MessageCount, table
from tidings.domain import MessageStatus
from tidings.queue.status import fold_counts, queue_overview
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
