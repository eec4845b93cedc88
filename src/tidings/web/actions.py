"""What the dashboard reads and does that no service offers yet: the signed-in key, dead letters,
a campaign's sends per minute, the outbox's messages, and putting one dead transactional message
back in the queue. Every query is scoped to the tenant, like the services'.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.orm import Session

from tidings.db.models import ApiKey, Campaign, ContactList, Event, Message, Suppression, Tenant
from tidings.domain import EventType, MessageStatus
from tidings.errors import Conflict, NotFound
from tidings.queue.enqueue import fresh_start
from tidings.queue.notify import notify_new_work
from tidings.services.pagination import Page, paginate

#: Messages that gave up: dead (retried until their time to live ran out) or failed (refused).
GAVE_UP = (MessageStatus.dead.value, MessageStatus.failed.value)
#: The sends-per-minute chart shows at most this many minutes, the latest ones.
CHART_MINUTES = 60


def signed_in_key(*, session: Session, key_id: int) -> tuple[ApiKey, Tenant] | None:
    """The key and its tenant, unless the key was revoked (or deleted)."""
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    ).first()
    return None if row is None else (row[0], row[1])


def dead_letters(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[Message]:
    """Messages that gave up, newest first."""
    query = select(Message).where(Message.tenant_id == tenant_id, Message.status.in_(GAVE_UP))
    return paginate(session, query, Message.id, limit=limit, cursor=cursor, descending=True)


def campaign_names(*, session: Session, tenant_id: int, campaign_ids: set[int]) -> dict[int, str]:
    if not campaign_ids:
        return {}
    rows = session.execute(
        select(Campaign.id, Campaign.name).where(
            Campaign.tenant_id == tenant_id, Campaign.id.in_(sorted(campaign_ids))
        )
    )
    return {row.id: row.name for row in rows}


def list_names(*, session: Session, tenant_id: int, list_ids: list[int]) -> list[str]:
    """The names of those of ``list_ids`` that still exist (a campaign keeps ids of deleted lists)."""
    if not list_ids:
        return []
    rows = session.execute(
        select(ContactList.id, ContactList.name).where(
            ContactList.tenant_id == tenant_id, ContactList.id.in_(list_ids)
        )
    )
    names = {row.id: row.name for row in rows}
    return [names[i] for i in list_ids if i in names]


def dead_letter(*, session: Session, tenant_id: int, message_id: int) -> Message:
    message = session.scalar(
        select(Message).where(Message.tenant_id == tenant_id, Message.id == message_id)
    )
    if message is None:
        raise NotFound("no such message")
    return message


def requeue_message(
    *, session: Session, tenant_id: int, message_id: int, now: datetime, ttl_seconds: float
) -> Message:
    """A transactional message that gave up goes back to the queue with a fresh start.

    Campaign messages go back through ``services.campaigns.retry_failed`` instead, which also
    reopens a completed campaign. An address on the suppression list stays unsent.
    """
    message = dead_letter(session=session, tenant_id=tenant_id, message_id=message_id)
    if message.campaign_id is not None:
        raise Conflict("retry a campaign's messages from the campaign", field="message_id")
    suppressed = session.scalar(
        select(
            exists().where(
                Suppression.tenant_id == tenant_id, Suppression.email == message.to_address
            )
        )
    )
    if suppressed:
        raise Conflict(f"{message.to_address} is on the suppression list", field="message_id")
    # Conditional on the status, like every queue write: a concurrent retry requeues it once.
    moved = session.execute(
        update(Message)
        .where(
            Message.tenant_id == tenant_id,
            Message.id == message.id,
            Message.status.in_(GAVE_UP),
        )
        .values(
            status=MessageStatus.queued.value,
            **fresh_start(now=now, ttl_seconds=ttl_seconds),
        )
        .execution_options(synchronize_session=False)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        raise Conflict(f"the message is {message.status}, not dead or failed", field="message_id")
    session.add(
        Event(
            tenant_id=tenant_id,
            message_id=message.id,
            type=EventType.queued.value,
            detail="retried from the dashboard",
            created_at=now,
        )
    )
    notify_new_work(session)
    session.refresh(message)
    return message


def _minute(session: Session) -> ColumnElement[Any]:
    """``messages.sent_at`` cut to the minute, as ``YYYY-MM-DD HH:MM`` text in UTC."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", Message.sent_at), "YYYY-MM-DD HH24:MI")
    # SQLite stores naive UTC text (db/types.py): its first 16 characters are the minute.
    return func.substr(Message.sent_at, 1, 16)


def sent_per_minute(
    *, session: Session, tenant_id: int, campaign_id: int, minutes: int = CHART_MINUTES
) -> list[tuple[datetime, int]]:
    """Messages sent in each minute that saw sends, oldest first (the latest ``minutes`` of them).

    One grouped query over the campaign's sent messages (index ``campaign_id, status``).
    """
    minute = _minute(session).label("minute")
    rows = session.execute(
        select(minute, func.count())
        .where(
            Message.tenant_id == tenant_id,
            Message.campaign_id == campaign_id,
            Message.status == MessageStatus.sent.value,
        )
        .group_by(minute)
        .order_by(minute.desc())
        .limit(minutes)
    ).all()
    parsed = [(datetime.fromisoformat(f"{text}:00+00:00"), n) for text, n in rows if text]
    return sorted(parsed)


def outbox_messages(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[Message]:
    """The tenant's sent messages that have a provider id (with the outbox: the ``.eml`` file name)."""
    query = select(Message).where(
        Message.tenant_id == tenant_id,
        Message.status == MessageStatus.sent.value,
        Message.provider_message_id.is_not(None),
    )
    return paginate(session, query, Message.id, limit=limit, cursor=cursor, descending=True)
