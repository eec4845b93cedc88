"""Leases: kept alive by the sender's heartbeat, taken back by the reaper when a worker vanished.

A lease that expired means its worker died or froze. Its messages go back to ``queued`` for another
worker (at-least-once delivery), and their lease token changes, so the vanished worker's late
writes are fenced off (see ``outcomes.py``). A message whose lease expired ``max_expiries`` times
is probably what kills workers (a poison message): it goes to dead letters instead of around again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from tidings.db.models import Event, Message, table
from tidings.domain import EventType, MessageStatus
from tidings.queue.enqueue import requeue_values


def renew_leases(
    *, session: Session, tokens: Sequence[str], now: datetime, lease_seconds: float
) -> int:
    """Extend the leases of the batches still in flight; returns how many messages were renewed."""
    if not tokens:
        return 0
    result = session.execute(
        update(Message)
        .where(Message.lease_token.in_(tokens), Message.status == MessageStatus.sending.value)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def reap_expired_leases(*, session: Session, now: datetime, max_expiries: int) -> tuple[int, int]:
    """Requeue messages whose lease expired (or kill poison ones); returns (requeued, dead)."""
    expired = (Message.status == MessageStatus.sending.value, Message.lease_expires_at < now)
    dead = session.execute(
        update(Message)
        .where(*expired, Message.lease_expiries + 1 >= max_expiries)
        .values(
            status=MessageStatus.dead.value,
            lease_expiries=Message.lease_expiries + 1,
            last_error=f"lease expired {max_expiries} times: the message keeps killing its worker",
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .returning(Message.id, Message.tenant_id, Message.campaign_id)
        .execution_options(synchronize_session=False)
    ).all()
    requeued = session.execute(
        update(Message)
        .where(*expired)
        .values(**requeue_values(now), lease_expiries=Message.lease_expiries + 1, not_before=now)
        .returning(Message.id, Message.tenant_id, Message.campaign_id)
        .execution_options(synchronize_session=False)
    ).all()
    events = [
        {
            "tenant_id": t,
            "message_id": m,
            "campaign_id": c,
            "type": kind.value,
            "detail": None,
            "created_at": now,
        }
        for rows, kind in ((requeued, EventType.lease_expired), (dead, EventType.dead))
        for m, t, c in rows
    ]
    if events:
        session.connection().execute(insert(table(Event)), events)
    return len(requeued), len(dead)
