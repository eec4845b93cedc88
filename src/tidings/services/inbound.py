"""Bounces and complaints that arrive after a message left us: from a provider's webhook (Resend,
``services/resend_events.py``) or from the bounce mailbox (DSN and ARF reports). Each is matched to
the original message and recorded exactly once.

"Exactly once" rests on ``inbound_events``' unique ``(provider, event_id)``: the first request to
insert an event id wins (``INSERT … ON CONFLICT DO NOTHING`` reports one row); a concurrent copy of
the same event waits on the unique index until the winner commits, then inserts nothing and
changes nothing. Providers redeliver webhooks, and MTAs resend reports, so this is routine.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.bounces.identify import (
    clean_message_id,
    message_id_from_header,
    message_id_from_verp,
)
from tidings.bounces.reports import FeedbackKind, ParsedReport
from tidings.db.models import Event, InboundEvent, Message
from tidings.domain import BounceKind, EventType, MessageStatus, SuppressionReason
from tidings.errors import NotFound
from tidings.queue.suppress import suppress

MAX_DETAIL_LENGTH = 2000  # characters
MAX_EVENT_ID_LENGTH = 200  # characters: inbound_events.event_id
MAILBOX = "mailbox"


class InboundOutcome(enum.StrEnum):
    recorded = "recorded"  # the message, address and contact were updated
    duplicate = "duplicate"  # this event was recorded before: nothing changed
    ignored = "ignored"  # nothing to record (another event type, a delay notice, not ours)


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The message a report is about: what recording it needs."""

    id: int
    tenant_id: int
    campaign_id: int | None
    contact_id: int | None
    to_address: str
    status: str


@dataclass(frozen=True, slots=True)
class InboundResult:
    outcome: InboundOutcome
    message_id: int | None = None
    kind: str | None = None  # a FeedbackKind, or the provider event recorded (delivered, opened …)
    reason: str | None = None  # why it was ignored, for the answer and the log


_COLUMNS = (
    Message.id,
    Message.tenant_id,
    Message.campaign_id,
    Message.contact_id,
    Message.to_address,
    Message.status,
)


def _original(row: Any) -> OriginalMessage:
    return OriginalMessage(
        id=row.id,
        tenant_id=row.tenant_id,
        campaign_id=row.campaign_id,
        contact_id=row.contact_id,
        to_address=row.to_address,
        status=row.status,
    )


def find_message(
    *,
    session: Session,
    secret_key: str,
    provider_message_id: str | None = None,
    message_id_headers: Sequence[str] = (),
    return_paths: Iterable[str] = (),
) -> OriginalMessage | None:
    """The message named by the provider's id, one of our Message-IDs, or a VERP return path.

    A Message-ID is looked up as stored (``messages.message_id_header``, written with the
    attempt); failing that, its HMAC is checked and its id read from it, so a report still matches
    when the attempt's outcome was never written (the worker died after the send).
    """
    if provider_message_id:
        row = session.execute(
            select(*_COLUMNS).where(Message.provider_message_id == provider_message_id).limit(1)
        ).first()
        if row is not None:
            return _original(row)
    headers = [clean_message_id(h) for h in message_id_headers if h.strip()]
    ids = {i for i in (message_id_from_header(secret_key, h) for h in headers) if i is not None}
    ids |= {i for i in (message_id_from_verp(secret_key, a) for a in return_paths) if i is not None}
    if not headers and not ids:
        return None
    conditions = []
    if headers:
        conditions.append(Message.message_id_header.in_(headers))
    if ids:
        conditions.append(Message.id.in_(ids))
    row = session.execute(select(*_COLUMNS).where(or_(*conditions)).limit(1)).first()
    return _original(row) if row is not None else None


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def first_report(
    *, session: Session, provider: str, event_id: str, tenant_id: int | None, now: datetime
) -> bool:
    """Remember that ``event_id`` was seen; True only for the first of its copies."""
    inserted = session.execute(
        _insert(session)(InboundEvent)
        .values(
            provider=provider,
            event_id=event_id[:MAX_EVENT_ID_LENGTH],
            tenant_id=tenant_id,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(InboundEvent.id)
    ).scalar_one_or_none()
    return inserted is not None


def record_feedback(
    *,
    session: Session,
    message: OriginalMessage,
    kind: FeedbackKind,
    detail: str,
    now: datetime,
) -> None:
    """What a bounce or complaint changes, in the caller's transaction.

    Hard bounce: the address is suppressed, the contact becomes ``bounced`` (unless it already
    opted out), a sent message becomes ``failed`` and a ``bounced`` event is written. Complaint:
    the address is suppressed, the contact becomes ``complained`` and a ``complained`` event is
    written (the message was delivered, it stays ``sent``). Soft bounce: a ``deferred`` event, and
    nothing suppressed, so that the guardrails' hard-bounce rate does not count it.

    The message's results move too (``bounce``, ``delivered_at``, ``complained_at``; the
    triggers of migration 0023 sum them per campaign): a bounce, hard or soft, means it is not
    delivered (as far as we know; a later delivery confirmation ends a soft bounce), a hard one
    outranks a soft one, and each message counts once however many reports name it.
    """
    detail = detail[:MAX_DETAIL_LENGTH]
    if kind is FeedbackKind.soft_bounce:
        _set_bounce(session, message, BounceKind.soft, now)
        _event(session, message, EventType.deferred, f"soft bounce reported: {detail}", now)
        return
    hard = kind is FeedbackKind.hard_bounce
    suppress(
        session,
        tenant_id=message.tenant_id,
        entries={message.to_address: detail},
        reason=SuppressionReason.hard_bounce if hard else SuppressionReason.complaint,
        now=now,
        contact_ids=[message.contact_id] if message.contact_id is not None else [],
    )
    if hard:
        session.execute(
            update(Message)
            .where(
                Message.tenant_id == message.tenant_id,
                Message.id == message.id,
                Message.status == MessageStatus.sent.value,
            )
            .values(
                status=MessageStatus.failed.value, last_error=f"bounced: {detail}", updated_at=now
            )
            .execution_options(synchronize_session=False)
        )
        _set_bounce(session, message, BounceKind.hard, now)
    else:
        session.execute(
            _of(message)
            .where(Message.complained_at.is_(None))
            .values(complained_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    _event(session, message, EventType.bounced if hard else EventType.complained, detail, now)


def _of(message: OriginalMessage) -> Any:
    return update(Message).where(Message.tenant_id == message.tenant_id, Message.id == message.id)


def _set_bounce(
    session: Session, message: OriginalMessage, bounce: BounceKind, now: datetime
) -> None:
    """The message bounced: not delivered any more; a soft bounce never overrides a hard one."""
    statement = _of(message).values(bounce=bounce.value, delivered_at=None, updated_at=now)
    if bounce is BounceKind.soft:
        statement = statement.where(func.coalesce(Message.bounce, "") != BounceKind.hard.value)
    session.execute(statement.execution_options(synchronize_session=False))


def record_delivered(
    *, session: Session, message: OriginalMessage, detail: str, at: datetime, now: datetime
) -> None:
    """The provider confirmed delivery at ``at``: the message is delivered (ending a soft bounce),
    unless a hard bounce or a failure was recorded for it; a ``delivered`` event either way."""
    session.execute(
        _of(message)
        .where(Message.status == MessageStatus.sent.value, Message.delivered_at.is_(None))
        .values(delivered_at=at, bounce=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    _event(session, message, EventType.delivered, detail, now)


def record_event(
    *, session: Session, message: OriginalMessage, event: EventType, detail: str, now: datetime
) -> None:
    """An event on the message that changes nothing else (a provider's delay notice)."""
    _event(session, message, event, detail, now)


def _event(
    session: Session, message: OriginalMessage, event: EventType, detail: str, now: datetime
) -> None:
    session.execute(
        insert(Event).values(
            tenant_id=message.tenant_id,
            message_id=message.id,
            campaign_id=message.campaign_id,
            type=event.value,
            detail=detail[:MAX_DETAIL_LENGTH],
            created_at=now,
        )
    )


def record_once(
    *,
    session: Session,
    provider: str,
    event_id: str,
    message: OriginalMessage,
    kind: FeedbackKind,
    detail: str,
    now: datetime,
) -> InboundResult:
    if not first_report(
        session=session, provider=provider, event_id=event_id, tenant_id=message.tenant_id, now=now
    ):
        return InboundResult(InboundOutcome.duplicate, message.id, kind, "already recorded")
    record_feedback(session=session, message=message, kind=kind, detail=detail, now=now)
    return InboundResult(InboundOutcome.recorded, message.id, kind)


# -- the bounce mailbox --------------------------------------------------------------------------


def record_mailbox_report(
    *,
    session: Session,
    report: ParsedReport,
    envelope_recipients: Sequence[str],
    secret_key: str,
    now: datetime,
) -> InboundResult:
    """Apply a parsed DSN or ARF report; ``NotFound`` when it names no message of ours.

    ``envelope_recipients`` are the addresses the report was delivered to (``RCPT TO``); with
    the report's own To / Delivered-To, a VERP return path among them names the message even
    when the report returned no headers.
    """
    if report.kind is None:
        return InboundResult(InboundOutcome.ignored, reason=f"nothing to record: {report.detail}")
    message = find_message(
        session=session,
        secret_key=secret_key,
        message_id_headers=report.message_ids,
        return_paths=[*envelope_recipients, *report.addressed_to],
    )
    if message is None:
        named = ", ".join(report.message_ids) or "no Message-ID and no VERP address"
        raise NotFound(f"no message of ours matches this report ({named})")
    return record_once(
        session=session,
        provider=MAILBOX,
        event_id=report.report_id,
        message=message,
        kind=report.kind,
        detail=report.detail,
        now=now,
    )
