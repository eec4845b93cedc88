"""Bounces and complaints that arrive after a message left us: from a provider's webhook (Resend)
or from the bounce mailbox (DSN and ARF reports). Each is matched to the original message and
recorded exactly once.

"Exactly once" rests on ``inbound_events``' unique ``(provider, event_id)``: the first request to
insert an event id wins (``INSERT … ON CONFLICT DO NOTHING`` reports one row); a concurrent copy of
the same event waits on the unique index until the winner commits, then inserts nothing and
changes nothing. Providers redeliver webhooks, and MTAs resend reports, so this is routine.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.bounces.identify import (
    clean_message_id,
    message_id_from_header,
    message_id_from_verp,
)
from tidings.bounces.reports import FeedbackKind, ParsedReport
from tidings.db.models import Event, InboundEvent, Message
from tidings.domain import EventType, MessageStatus, SuppressionReason
from tidings.errors import InvalidInput, NotFound
from tidings.queue.suppress import suppress

MAX_DETAIL_LENGTH = 2000  # characters
MAX_EVENT_ID_LENGTH = 200  # characters: inbound_events.event_id
RESEND = "resend"
MAILBOX = "mailbox"
#: Resend's ``bounce.type`` values that mean "never again" (its docs: Permanent = hard bounce).
RESEND_HARD_BOUNCE_TYPES = frozenset({"permanent"})


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
    kind: FeedbackKind | None = None
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
    written (the message was delivered, it stays ``sent``). Soft bounce: a ``deferred`` event only,
    so that the guardrails' hard-bounce rate does not count it.
    """
    detail = detail[:MAX_DETAIL_LENGTH]
    if kind is FeedbackKind.soft_bounce:
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
    _event(session, message, EventType.bounced if hard else EventType.complained, detail, now)


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


def _record_once(
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


# -- Resend --------------------------------------------------------------------------------------


def _resend_kind(event_type: str, data: Mapping[str, Any]) -> FeedbackKind | None:
    if event_type == "email.complained":
        return FeedbackKind.complaint
    if event_type != "email.bounced":
        return None
    bounce = data.get("bounce")
    bounce_type = str(bounce.get("type", "")) if isinstance(bounce, Mapping) else ""
    # Resend sends email.bounced for permanent rejections; a bounce object that says otherwise
    # (Transient, Undetermined) is recorded as soft, never suppressed.
    if not bounce_type or bounce_type.lower() in RESEND_HARD_BOUNCE_TYPES:
        return FeedbackKind.hard_bounce
    return FeedbackKind.soft_bounce


def _resend_detail(event_type: str, data: Mapping[str, Any]) -> str:
    bounce = data.get("bounce")
    if event_type == "email.bounced" and isinstance(bounce, Mapping):
        parts = [str(bounce.get(k)) for k in ("type", "subType") if bounce.get(k)]
        message = bounce.get("message")
        return f"Resend: {' / '.join(parts) or 'bounce'}" + (f": {message}" if message else "")
    return "Resend: the recipient marked the message as spam"


def _message_id_headers(data: Mapping[str, Any]) -> list[str]:
    """Message-ID headers in a payload's ``headers`` (a list of name/value pairs, or a mapping)."""
    headers = data.get("headers")
    pairs: Iterable[tuple[Any, Any]] = ()
    if isinstance(headers, Mapping):
        pairs = headers.items()
    elif isinstance(headers, list):
        pairs = ((h.get("name"), h.get("value")) for h in headers if isinstance(h, Mapping))
    return [str(v) for k, v in pairs if str(k).lower() == "message-id" and isinstance(v, str)]


def record_resend_event(
    *, session: Session, event_id: str, payload: object, secret_key: str, now: datetime
) -> InboundResult:
    """Apply one verified Resend webhook event (``email.bounced``, ``email.complained``).

    Other event types are acknowledged and ignored; an event for a message we do not know is
    ignored too (another system may share the Resend account), so Resend stops retrying it.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("type"), str):
        raise InvalidInput("the event must be a JSON object with a type", field="type")
    event_type: str = payload["type"]
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise InvalidInput("the event has no data object", field="data")
    kind = _resend_kind(event_type, data)
    if kind is None:
        return InboundResult(InboundOutcome.ignored, reason=f"{event_type} needs no action")
    email_id = data.get("email_id")
    message = find_message(
        session=session,
        secret_key=secret_key,
        provider_message_id=email_id if isinstance(email_id, str) else None,
        message_id_headers=_message_id_headers(data),
    )
    if message is None:
        return InboundResult(InboundOutcome.ignored, kind=kind, reason="no message of ours matches")
    return _record_once(
        session=session,
        provider=RESEND,
        event_id=event_id,
        message=message,
        kind=kind,
        detail=_resend_detail(event_type, data),
        now=now,
    )


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
    return _record_once(
        session=session,
        provider=MAILBOX,
        event_id=report.report_id,
        message=message,
        kind=report.kind,
        detail=report.detail,
        now=now,
    )
