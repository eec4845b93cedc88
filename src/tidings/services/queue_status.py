"""What the queue holds right now, for operators: counts by tenant and status, the ready backlog,
the oldest message still waiting, and the workers alive.

One grouped scan of ``messages`` answers all of it, so the CLI's ``queue`` command, the dashboard
and a Prometheus scrape each read the table once. "Waiting" means queued and due
(``not_before`` passed): a message scheduled for later, or waiting for its retry time, is not late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from tidings.db.models import Message, Tenant
from tidings.db.models import Worker as WorkerRow
from tidings.domain import MessageStatus

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


def queue_overview(
    *, session: Session, now: datetime, tenant_id: int | None = None
) -> QueueOverview:
    """Counts per tenant and status, the ready backlog and live workers; ``tenant_id`` narrows it."""
    due = (Message.status == MessageStatus.queued.value) & (Message.not_before <= now)
    query = (
        select(
            Message.tenant_id,
            Tenant.name,
            Message.status,
            func.count(),
            func.count(case((due, 1))),
            func.min(case((due, Message.not_before))),
        )
        .join(Tenant, Tenant.id == Message.tenant_id)
        .group_by(Message.tenant_id, Tenant.name, Message.status)
        .order_by(Message.tenant_id)
    )
    if tenant_id is not None:
        query = query.where(Message.tenant_id == tenant_id)
    rows: dict[int, tuple[str, dict[str, int], list[int], list[datetime]]] = {}
    for owner, name, status, count, ready, oldest in session.execute(query):
        _, counts, ready_counts, oldest_times = rows.setdefault(owner, (name, {}, [], []))
        counts[status] = count
        ready_counts.append(ready)
        if oldest is not None:
            oldest_times.append(_aware(oldest))
    tenants = [
        TenantQueue(
            tenant_id=owner,
            tenant_name=name,
            counts=counts,
            ready=sum(ready_counts),
            oldest_waiting_since=min(oldest_times) if oldest_times else None,
        )
        for owner, (name, counts, ready_counts, oldest_times) in rows.items()
    ]
    return QueueOverview(
        now=now, tenants=tenants, workers_alive=count_live_workers(session=session, now=now)
    )


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
        .where(Message.status == MessageStatus.queued.value, Message.not_before <= now)
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
