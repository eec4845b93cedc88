"""What the queue holds right now, for operators: counts by tenant and status, the ready backlog,
the oldest message still waiting, and the workers alive.

The counts come from ``message_counts`` (kept by triggers, migration 0014) and the backlog from
the queue's partial index, so the CLI's ``queue`` command, the dashboard and a Prometheus scrape
cost the same at ten million finished messages as at none. "Waiting" means queued and due
(``not_before`` passed): a message scheduled for later, or waiting for its retry time, is not late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, literal_column, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from tidings.db.models import Message, MessageCount, Tenant
from tidings.db.models import Worker as WorkerRow

#: A worker whose heartbeat is older than this is presumed gone. Workers refresh theirs about
#: every second (their maintenance pass), so this leaves room for a slow database.
WORKER_FRESH_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class TenantQueue:
    tenant_id: int
    tenant_name: str
    counts: dict[str, int]  # message status -> messages, only statuses that occur
    ready: int  # queued and due now
    oldest_waiting_since: datetime | None  # ``not_before`` of the longest-waiting ready message

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class OldestWaiting:
    message_id: int
    tenant_id: int
    to_address: str
    campaign_id: int | None
    waiting_since: datetime  # its ``not_before``: when it became due

    def age_seconds(self, now: datetime) -> float:
        return max(0.0, (now - self.waiting_since).total_seconds())


@dataclass(frozen=True, slots=True)
class QueueOverview:
    now: datetime
    tenants: list[TenantQueue] = field(default_factory=list)  # by tenant id; tenants with messages
    workers_alive: int = 0

    @property
    def ready(self) -> int:
        return sum(t.ready for t in self.tenants)

    @property
    def oldest_waiting_since(self) -> datetime | None:
        times = [t.oldest_waiting_since for t in self.tenants if t.oldest_waiting_since]
        return min(times) if times else None

    def oldest_waiting_seconds(self) -> float:
        oldest = self.oldest_waiting_since
        return 0.0 if oldest is None else max(0.0, (self.now - oldest).total_seconds())


#: ``status = 'queued'`` as SQL text, not a bound parameter: only then does the planner match the
#: partial index ``ix_messages_claim`` (whose predicate is that text) in every plan, so the ready
#: backlog is read from the queue's own small index and never from the history.
QUEUED: ColumnElement[str] = literal_column("'queued'")


def queue_overview(
    *, session: Session, now: datetime, tenant_id: int | None = None
) -> QueueOverview:
    """Counts per tenant and status, the ready backlog and live workers; ``tenant_id`` narrows it.

    The counts are the triggers' running sums (migration 0014): a few rows per tenant, whatever
    the size of the history. The backlog is read from the queue itself."""
    counts = (
        select(
            MessageCount.tenant_id, Tenant.name, MessageCount.status, func.sum(MessageCount.count)
        )
        .join(Tenant, Tenant.id == MessageCount.tenant_id)
        .group_by(MessageCount.tenant_id, Tenant.name, MessageCount.status)
        .having(func.sum(MessageCount.count) != 0)
        .order_by(MessageCount.tenant_id)
    )
    ready = (
        select(Message.tenant_id, func.count(), func.min(Message.not_before))
        .where(Message.status == QUEUED, Message.not_before <= now)
        .group_by(Message.tenant_id)
    )
    if tenant_id is not None:
        counts = counts.where(MessageCount.tenant_id == tenant_id)
        ready = ready.where(Message.tenant_id == tenant_id)
    backlog = {owner: (waiting, oldest) for owner, waiting, oldest in session.execute(ready)}
    rows: dict[int, tuple[str, dict[str, int]]] = {}
    for owner, name, status, count in session.execute(counts):
        rows.setdefault(owner, (name, {}))[1][status] = int(count)
    tenants = []
    for owner, (name, by_status) in rows.items():
        waiting, oldest = backlog.get(owner, (0, None))
        tenants.append(
            TenantQueue(
                tenant_id=owner,
                tenant_name=name,
                counts=by_status,
                ready=waiting,
                oldest_waiting_since=None if oldest is None else _aware(oldest),
            )
        )
    return QueueOverview(
        now=now, tenants=tenants, workers_alive=count_live_workers(session=session, now=now)
    )


def fold_counts(*, session: Session) -> int:
    """PostgreSQL: move the count shards of connections that have closed into shard 0, and drop
    rows that say zero, so that a scrape sums a few rows per tenant and status rather than one
    per connection that ever wrote. Rows a live transaction holds are skipped (``SKIP LOCKED``):
    this never waits on, nor delays, a writer. Returns the shards' rows folded."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    # Zero rows first, in a statement of their own: a fold that deleted shard 0's zero row and
    # wrote that key again in one statement would meet the row it had just deleted.
    session.execute(
        text(
            "DELETE FROM message_counts WHERE ctid IN (SELECT ctid FROM message_counts "
            "WHERE count = 0 FOR UPDATE SKIP LOCKED)"
        )
    )
    folded = session.execute(
        text(
            """
            WITH gone AS (
                DELETE FROM message_counts WHERE ctid IN (
                    SELECT ctid FROM message_counts
                    WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity)
                    FOR UPDATE SKIP LOCKED
                )
                RETURNING tenant_id, status, count
            ), folded AS (
                INSERT INTO message_counts (tenant_id, status, shard, count)
                SELECT tenant_id, status, 0, sum(count) FROM gone
                GROUP BY tenant_id, status HAVING sum(count) <> 0
                ORDER BY tenant_id, status
                ON CONFLICT (tenant_id, status, shard)
                DO UPDATE SET count = message_counts.count + EXCLUDED.count
            )
            SELECT count(*) FROM gone
            """
        )
    ).scalar_one()
    return int(folded)


def count_live_workers(*, session: Session, now: datetime) -> int:
    fresh_since = now - timedelta(seconds=WORKER_FRESH_SECONDS)
    return (
        session.scalar(
            select(func.count()).select_from(WorkerRow).where(WorkerRow.heartbeat_at >= fresh_since)
        )
        or 0
    )


def oldest_waiting(
    *, session: Session, now: datetime, tenant_id: int | None = None
) -> OldestWaiting | None:
    """The due message that has waited longest (in claim order among equals), or None."""
    query = (
        select(
            Message.id,
            Message.tenant_id,
            Message.to_address,
            Message.campaign_id,
            Message.not_before,
        )
        .where(Message.status == QUEUED, Message.not_before <= now)
        .order_by(Message.not_before, Message.id)
        .limit(1)
    )
    if tenant_id is not None:
        query = query.where(Message.tenant_id == tenant_id)
    row = session.execute(query).first()
    if row is None:
        return None
    message_id, owner, to_address, campaign_id, not_before = row
    return OldestWaiting(
        message_id=message_id,
        tenant_id=owner,
        to_address=to_address,
        campaign_id=campaign_id,
        waiting_since=_aware(not_before),
    )


def _aware(value: datetime | str) -> datetime:
    """Aware UTC, whatever the dialect hands back for an aggregate over a ``UTCDateTime`` column."""
    if isinstance(value, str):  # SQLite's stored text, should the column type be lost
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
