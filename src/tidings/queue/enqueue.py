"""Writing work into the queue and taking it back: one transactional message, and the bulk status
changes a campaign makes to its not-yet-claimed messages (pause, resume, cancel, retry).

Every bulk statement here is a single conditional ``UPDATE … WHERE status IN (…)``. That condition is
the whole concurrency story: a row a worker has claimed is ``sending`` (PostgreSQL re-checks the
condition after waiting for the claim's row lock; SQLite runs one writer at a time), so it is never
touched here and its attempt finishes; every row not yet claimed changes at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db.models import Campaign, Contact, Event, Message, Suppression, table
from tidings.domain import CampaignStatus, ContactStatus, EventType, MessageStatus
from tidings.queue.notify import notify_new_work

#: Not claimed yet: these can still be paused, cancelled, or held back.
UNCLAIMED = (MessageStatus.queued.value, MessageStatus.paused.value)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A transactional message, validated and rendered once by the caller."""

    tenant_id: int
    to_address: str  # bare, normalised address
    contact_id: int | None  # the contact it goes to, when known
    template_id: int | None  # a stored template, or the inline subject/html/text below
    subject: str | None
    html: str | None
    text: str | None
    data: dict[str, Any]  # template data
    from_address: str | None  # None: the settings' default
    category: str | None
    priority: int  # as stored: API priority plus TRANSACTIONAL_PRIORITY_BOOST
    not_before: datetime
    expires_at: datetime
    idempotency_key: str | None
    reference: str | None  # a group, e.g. one meeting's reminders
    #: When set, the message is stored ``suppressed`` with this reason and never sent.
    suppressed_reason: str | None = None
    event_at: datetime | None = None  # a reminder's event, which its template may show
    #: A reminder: seconds before ``event_at``; at most one per (tenant, reference, offset).
    reminder_offset: int | None = None
    #: Its sending window (``SendWindow.to_json``) and the zone it is read in; ``not_before`` is
    #: already at an opening, and the claim keeps later attempts inside it.
    send_window: dict[str, Any] | None = None
    window_timezone: str | None = None
    #: Reply-To, extra headers, attachment references (``services/message_features.py``), or None.
    features: dict[str, Any] | None = None
    track_opens: bool | None = None  # None: the tenant's setting
    track_clicks: bool | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    message: Message
    created: bool  # False: an earlier request with the same Idempotency-Key made it
    #: A new message's first event, so the caller can answer without reading it back.
    event: Event | None = None


def find_by_idempotency_key(*, session: Session, tenant_id: int, key: str) -> Message | None:
    found: Message | None = session.scalar(
        select(Message).where(Message.tenant_id == tenant_id, Message.idempotency_key == key)
    )
    return found


def find_earlier(*, session: Session, new: NewMessage) -> Message | None:
    """The message an earlier request made in place of ``new``: the same idempotency key, or the
    same reminder (tenant, reference, offset); None when ``new`` has neither."""
    if new.idempotency_key is not None:
        return find_by_idempotency_key(
            session=session, tenant_id=new.tenant_id, key=new.idempotency_key
        )
    if new.reminder_offset is None:
        return None
    found: Message | None = session.scalar(
        select(Message).where(
            Message.tenant_id == new.tenant_id,
            Message.reference == new.reference,
            Message.reminder_offset == new.reminder_offset,
        )
    )
    return found


# Built once (SQLAlchemy memoises a statement's cache key); the values come with each execute.
_INSERT_MESSAGE = insert(table(Message)).returning(table(Message).c.id)
_INSERT_EVENT = insert(table(Event))


def enqueue_message(*, session: Session, new: NewMessage, now: datetime) -> Enqueued:
    """Store one message (queued, or suppressed) with its first event; a repeated key (or the same
    reminder again) returns the first.

    Two requests with the same key may race past the look-up. The insert runs in a SAVEPOINT, so the
    loser's unique violation (raised once the winner commits, PostgreSQL waits on the index entry)
    rolls back only the savepoint, and the loser answers with the winner's row. A reminder's
    (tenant, reference, offset) is such a key too (``uq_messages_tenant_reminder``).
    """
    unique = new.idempotency_key is not None or new.reminder_offset is not None
    if unique:
        earlier = find_earlier(session=session, new=new)
        if earlier is not None:
            return Enqueued(message=earlier, created=False)
    status = MessageStatus.queued if new.suppressed_reason is None else MessageStatus.suppressed
    values: dict[str, Any] = {
        "tenant_id": new.tenant_id,
        "campaign_id": None,
        "contact_id": new.contact_id,
        "to_address": new.to_address,
        "template_id": new.template_id,
        "subject": new.subject,
        "html": new.html,
        "text": new.text,
        "data": new.data,
        "from_address": new.from_address,
        "category": new.category,
        "priority": new.priority,
        "status": status.value,
        "not_before": new.not_before,
        "expires_at": new.expires_at,
        "attempts": 0,
        "lease_expiries": 0,
        "last_error": new.suppressed_reason,
        "idempotency_key": new.idempotency_key,
        "reference": new.reference,
        "event_at": new.event_at,
        "reminder_offset": new.reminder_offset,
        "send_window": new.send_window,
        "window_timezone": new.window_timezone,
        "features": new.features,
        "track_opens": new.track_opens,
        "track_clicks": new.track_clicks,
        "created_at": now,
        "updated_at": now,
    }
    # Core statements, not the unit of work: this runs for every message the API accepts, and
    # two ORM flushes cost more than the two inserts. The caller gets a detached Message with
    # every column it was written with.
    if not unique:  # nothing to race on: no savepoint round trips
        message_id = session.connection().execute(_INSERT_MESSAGE, values).scalar_one()
    else:
        try:
            with session.begin_nested():
                message_id = session.connection().execute(_INSERT_MESSAGE, values).scalar_one()
        except IntegrityError:
            earlier = find_earlier(session=session, new=new)
            if earlier is None:  # the violation was not the key's: let it surface
                raise
            return Enqueued(message=earlier, created=False)
    message = Message(id=message_id, **values)
    event_values: dict[str, Any] = {
        "tenant_id": new.tenant_id,
        "message_id": message_id,
        "campaign_id": None,
        "type": (
            EventType.queued if status is MessageStatus.queued else EventType.suppressed
        ).value,
        "detail": new.suppressed_reason,
        "created_at": now,
    }
    session.connection().execute(_INSERT_EVENT, event_values)
    event = Event(**event_values)
    if status is MessageStatus.queued:
        notify_new_work(session)
    return Enqueued(message=message, created=True, event=event)


def cancel_unclaimed(
    *,
    session: Session,
    where: ColumnElement[bool],
    now: datetime,
    record_events: bool,
    reason: str | None = None,
) -> int:
    """Cancel every message matching ``where`` that no worker has claimed; how many were.

    ``record_events=False`` is for a whole campaign: its history is the campaign's own event, not
    one row per recipient. ``reason``, when given, is kept as the message's ``last_error`` and its
    event's detail (a reminder whose time passed as its event moved).
    """
    values: dict[str, Any] = {"status": MessageStatus.cancelled.value, "updated_at": now}
    if reason is not None:
        values["last_error"] = reason
    statement = (
        update(Message)
        .where(where, Message.status.in_(UNCLAIMED))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not record_events:
        result = session.execute(statement)
        count: int = result.rowcount  # type: ignore[attr-defined]
        return count
    rows = session.execute(
        statement.returning(Message.id, Message.tenant_id, Message.campaign_id)
    ).all()
    if rows:
        session.execute(
            insert(Event),
            [
                {
                    "tenant_id": tenant_id,
                    "message_id": message_id,
                    "campaign_id": campaign_id,
                    "type": EventType.cancelled.value,
                    "detail": reason,
                    "created_at": now,
                }
                for message_id, tenant_id, campaign_id in rows
            ],
        )
    return len(rows)


def fresh_start(*, now: datetime, ttl_seconds: float) -> dict[str, Any]:
    """The columns of a failed or dead message sent around again: no attempts, a new time to live."""
    return {
        "attempts": 0,
        "lease_expiries": 0,
        "last_error": None,
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "not_before": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "updated_at": now,
    }


def requeue_status() -> ColumnElement[str]:
    """The status for a message going back to the queue (a retry, an expired lease), as SQL.

    A message that was ``sending`` when its campaign was paused or cancelled was left alone then;
    when it comes back it must follow its campaign (``paused`` / ``cancelled``), not be sent.
    For use in the worker's requeue ``UPDATE messages SET status = requeue_status() …``.
    """
    campaign_status = (
        select(Campaign.status)
        .where(Campaign.id == Message.campaign_id, Campaign.tenant_id == Message.tenant_id)
        .scalar_subquery()
    )
    return case(
        (campaign_status == CampaignStatus.paused.value, literal(MessageStatus.paused.value)),
        (campaign_status == CampaignStatus.cancelled.value, literal(MessageStatus.cancelled.value)),
        else_=literal(MessageStatus.queued.value),
    )


def requeue_values(now: datetime) -> dict[str, Any]:
    """The values of every ``UPDATE messages`` that gives a leased message back to the queue: the
    status its campaign allows (``requeue_status``), the lease cleared."""
    return {
        "status": requeue_status(),
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "updated_at": now,
    }


def hold_campaign_messages(*, session: Session, campaign_id: int, now: datetime) -> int:
    """Pause: the campaign's queued messages become ``paused``, which the claim never picks."""
    return _move(
        session,
        Message.campaign_id == campaign_id,
        MessageStatus.queued,
        MessageStatus.paused,
        now,
    )


def release_campaign_messages(*, session: Session, campaign_id: int, now: datetime) -> int:
    """Resume: exactly the held messages go back to ``queued`` (none twice, none skipped)."""
    released = _move(
        session,
        Message.campaign_id == campaign_id,
        MessageStatus.paused,
        MessageStatus.queued,
        now,
    )
    if released:
        notify_new_work(session)
    return released


def requeue_failed_campaign_messages(
    *,
    session: Session,
    campaign_id: int,
    now: datetime,
    ttl_seconds: float,
    hold: bool = False,
) -> int:
    """Give the campaign's failed and dead messages a fresh start: attempts reset, new time to live.

    Recipients who must not be mailed any more (the address was put on the suppression list since,
    after a hard bounce most likely, or the contact is no longer active) become ``suppressed``
    instead. ``hold=True`` requeues as ``paused`` (the campaign is paused). Returns how many went
    back to the queue.
    """
    retryable = and_(
        Message.campaign_id == campaign_id,
        Message.status.in_((MessageStatus.failed.value, MessageStatus.dead.value)),
    )
    listed = (
        select(Suppression.reason)
        .where(Suppression.tenant_id == Message.tenant_id, Suppression.email == Message.to_address)
        .scalar_subquery()
    )
    contact_status = (
        select(Contact.status)
        .where(
            Contact.id == Message.contact_id,
            Contact.tenant_id == Message.tenant_id,
            Contact.status != ContactStatus.active.value,
        )
        .scalar_subquery()
    )
    session.execute(
        update(Message)
        .where(retryable, or_(listed.is_not(None), contact_status.is_not(None)))
        .values(
            status=MessageStatus.suppressed.value,
            last_error=case(
                (
                    listed.is_not(None),
                    literal("address is on the suppression list (") + listed + literal(")"),
                ),
                else_=literal("contact is ") + contact_status,
            ),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    target = MessageStatus.paused if hold else MessageStatus.queued
    requeued = session.execute(
        update(Message)
        .where(retryable)
        .values(
            status=target.value,
            **fresh_start(now=now, ttl_seconds=ttl_seconds),
        )
        .execution_options(synchronize_session=False)
    )
    count: int = requeued.rowcount  # type: ignore[attr-defined]
    if count and not hold:
        notify_new_work(session)
    return count


def _move(
    session: Session,
    where: ColumnElement[bool],
    source: MessageStatus,
    target: MessageStatus,
    now: datetime,
) -> int:
    result = session.execute(
        update(Message)
        .where(where, Message.status == source.value)
        .values(status=target.value, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count
