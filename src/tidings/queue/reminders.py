"""A reference's reminders: read them, and move the ones no worker has claimed to new times.

Moving is one conditional ``UPDATE … WHERE status IN ('queued', 'paused')``, the same story as
every bulk change in ``enqueue.py``: a reminder a worker has claimed is ``sending`` (PostgreSQL
re-checks the condition after waiting for the claim's row lock; SQLite runs one writer at a time),
so it is never moved, and is sent at the time it was claimed for; every one not yet claimed moves
at once, with the event time its template will show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, insert, literal, select, update
from sqlalchemy.orm import Session

from tidings.db.models import Event, Message
from tidings.db.types import UTCDateTime
from tidings.domain import EventType, MessageStatus
from tidings.queue.enqueue import UNCLAIMED, cancel_unclaimed
from tidings.queue.notify import notify_new_work

#: ``last_error`` of a reminder a move cancelled because its new time had passed: a later move
#: that puts its time in the future again brings it back (a cancel by the tenant is for good).
MOVED_INTO_THE_PAST = "its time had passed when its event moved"


@dataclass(frozen=True, slots=True)
class Reminder:
    """One reminder message as stored."""

    message_id: int
    offset: int  # seconds before the event
    status: MessageStatus
    send_at: datetime  # not before this time (``not_before``)
    event_at: datetime  # the event time its template shows
    last_error: str | None  # why it was suppressed, failed or cancelled by a move


def _of(tenant_id: int, reference: str) -> ColumnElement[bool]:
    return (
        (Message.tenant_id == tenant_id)
        & (Message.reference == reference)
        & Message.reminder_offset.is_not(None)
    )


def reminders_of(*, session: Session, tenant_id: int, reference: str) -> list[Reminder]:
    """The reference's reminders, the earliest first (the largest offset)."""
    rows = session.execute(
        select(
            Message.id,
            Message.reminder_offset,
            Message.status,
            Message.not_before,
            Message.event_at,
            Message.last_error,
        )
        .where(_of(tenant_id, reference))
        .order_by(Message.reminder_offset.desc())
    )
    return [
        Reminder(
            message_id=row.id,
            offset=row.reminder_offset,
            status=MessageStatus(row.status),
            send_at=row.not_before,
            event_at=row.event_at,
            last_error=row.last_error,
        )
        for row in rows
    ]


def move_unclaimed_reminders(
    *,
    session: Session,
    tenant_id: int,
    reference: str,
    event_at: datetime,
    times: Mapping[int, tuple[datetime, datetime]],
    now: datetime,
) -> set[int]:
    """Move each reminder of ``reference`` whose offset is in ``times`` and that no worker has
    claimed to its ``(send_at, expires_at)`` and the new ``event_at``; one that an earlier move
    cancelled (``MOVED_INTO_THE_PAST``) is queued again first. The ids moved."""
    if not times:
        return set()
    mine = _of(tenant_id, reference) & Message.reminder_offset.in_(list(times))
    revived = session.execute(
        update(Message)
        .where(
            mine,
            Message.status == MessageStatus.cancelled.value,
            Message.last_error == MOVED_INTO_THE_PAST,
        )
        .values(status=MessageStatus.queued.value, last_error=None, updated_at=now)
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    ).all()
    if revived:
        session.execute(
            insert(Event),
            [
                {
                    "tenant_id": tenant_id,
                    "message_id": message_id,
                    "campaign_id": None,
                    "type": EventType.queued.value,
                    "detail": "its event moved",
                    "created_at": now,
                }
                for (message_id,) in revived
            ],
        )
    moved = session.execute(
        update(Message)
        .where(mine, Message.status.in_(UNCLAIMED))
        .values(
            not_before=_by_offset({o: t[0] for o, t in times.items()}),
            expires_at=_by_offset({o: t[1] for o, t in times.items()}),
            event_at=event_at,
            updated_at=now,
        )
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    ).all()
    if moved:
        notify_new_work(session)  # a reminder moved earlier may be due sooner than a worker looks
    return {message_id for (message_id,) in moved}


def cancel_unclaimed_reminders(
    *, session: Session, tenant_id: int, reference: str, offsets: list[int], now: datetime
) -> int:
    """Cancel the reminders of ``reference`` at ``offsets`` that no worker has claimed, as moved
    into the past (``MOVED_INTO_THE_PAST``); how many were."""
    if not offsets:
        return 0
    return cancel_unclaimed(
        session=session,
        where=_of(tenant_id, reference) & Message.reminder_offset.in_(offsets),
        now=now,
        record_events=True,
        reason=MOVED_INTO_THE_PAST,
    )


def _by_offset(values: Mapping[int, datetime]) -> Any:
    """``CASE reminder_offset WHEN … THEN …`` with each time bound as the column's own type."""
    return case(
        {offset: literal(value, UTCDateTime()) for offset, value in values.items()},
        value=Message.reminder_offset,
    )
