"""GDPR erasure: a contact deleted, and its address gone from every record that held it.

What ``erase_contact`` does, in the caller's transaction (one commit, so an erasure is never half
done):

* the contact, its list memberships and its preferences are deleted;
* its messages (by contact, and those addressed to it without one) keep their row, so campaign
  figures stay right, but ``to_address`` becomes the keyed hash of the address
  (``address_hash.py``), the bodies (subject, html, text, data) are nulled, and the address is
  replaced by the hash wherever else it appears in them (last error, reference, idempotency key);
  those still waiting to be sent are cancelled;
* every event, webhook delivery, suppression detail and campaign reason of the tenant that
  mentions the address (in any case) has it replaced by the hash: event details quote SMTP
  replies and bounce reports, which often name the recipient;
* the suppression entries of the address are replaced by one entry holding its hash, with the
  strongest reason they had (``manual`` when there was none), so the address stays suppressed
  when it comes back (``services/suppressions.restore_erased`` and the send-time screen);
* an ``contact_erased`` event records that it happened, with the contact's id, never the address.

The searches of events and webhook deliveries scan the tenant's rows (no index holds the text of
a detail): an erasure is rare, and a correct one is worth a scan. What this cannot reach: the
address typed by the tenant into other people's data (a template, another contact's attributes),
database backups, and deleted rows that PostgreSQL has not vacuumed yet or SQLite has not
overwritten (see the README).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, delete, func, null, or_, select, update
from sqlalchemy.orm import Session

from tidings.address_hash import hashed_address
from tidings.db.models import (
    Campaign,
    Contact,
    Event,
    ListMember,
    Message,
    Preference,
    Suppression,
    TrackingHit,
    WebhookDelivery,
)
from tidings.domain import EventType, MessageStatus, SuppressionReason
from tidings.services.contacts import get_contact

#: When an address had several entries (in different case), the one kept says the strongest.
_REASON_STRENGTH = {
    SuppressionReason.unsubscribe.value: 0,
    SuppressionReason.manual.value: 1,
    SuppressionReason.hard_bounce.value: 2,
    SuppressionReason.complaint.value: 3,
}
ERASED_DETAIL = "kept as a keyed hash after an erasure request"
ERASED_ERROR = "the recipient's data was erased"


@dataclass(frozen=True, slots=True)
class Erasure:
    contact_id: int
    messages: int  # message rows rewritten
    cancelled: int  # of which were still waiting to be sent
    events: int  # event details rewritten
    webhook_deliveries: int  # payloads rewritten
    suppression_reason: str  # the reason the hashed entry keeps


def erase_contact(
    *, session: Session, tenant_id: int, contact_id: int, address_key: bytes, now: datetime
) -> Erasure:
    """Erase one contact of the tenant (``NotFound`` for another tenant's, as for a missing one)."""
    contact = get_contact(session=session, tenant_id=tenant_id, contact_id=contact_id)
    address = contact.email
    hashed = hashed_address(address_key, tenant_id, address)
    pattern = re.compile(re.escape(address), re.IGNORECASE)
    needle = address.lower()

    def scrub(value: str | None) -> str | None:
        return None if value is None else pattern.sub(hashed, value)

    messages, cancelled = _erase_messages(
        session, tenant_id, contact_id, needle, hashed, scrub, now
    )
    events = _rewrite_text(
        session, Event, Event.detail, [Event.tenant_id == tenant_id], needle, scrub
    )
    _rewrite_text(
        session,
        Campaign,
        Campaign.status_reason,
        [Campaign.tenant_id == tenant_id],
        needle,
        scrub,
    )
    deliveries = _erase_webhook_payloads(session, tenant_id, needle, scrub)
    reason = _hash_suppressions(session, tenant_id, needle, hashed, scrub, now)
    session.execute(
        delete(ListMember).where(
            ListMember.tenant_id == tenant_id, ListMember.contact_id == contact_id
        )
    )
    session.execute(
        delete(Preference).where(
            Preference.tenant_id == tenant_id, Preference.contact_id == contact_id
        )
    )
    session.execute(delete(Contact).where(Contact.tenant_id == tenant_id, Contact.id == contact_id))
    session.add(
        Event(
            tenant_id=tenant_id,
            contact_id=contact_id,
            type=EventType.contact_erased.value,
            detail=(
                f"contact {contact_id} erased: {messages} message(s) kept without their content"
                f" ({cancelled} cancelled), {events} event(s) and {deliveries} webhook"
                f" delivery(ies) rewritten; the address stays suppressed ({reason}) as a keyed hash"
            ),
            created_at=now,
        )
    )
    session.flush()
    session.expunge_all()  # nothing loaded before may be written back with the address
    return Erasure(contact_id, messages, cancelled, events, deliveries, reason)


def _erase_messages(
    session: Session,
    tenant_id: int,
    contact_id: int,
    needle: str,
    hashed: str,
    scrub: Any,
    now: datetime,
) -> tuple[int, int]:
    """(messages rewritten, of which cancelled). There is no index on ``to_address`` (the fan-out
    would pay for it on every row): the ad-hoc messages to the address are found by a scan of the
    tenant's messages."""
    theirs = (Message.tenant_id == tenant_id) & or_(
        Message.contact_id == contact_id, func.lower(Message.to_address) == needle
    )
    cancelled = session.execute(
        update(Message)
        .where(theirs, Message.status.in_([MessageStatus.queued.value, MessageStatus.paused.value]))
        .values(status=MessageStatus.cancelled.value, last_error=ERASED_ERROR, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    rows = session.execute(
        select(Message.id, Message.last_error, Message.reference, Message.idempotency_key).where(
            theirs
        )
    ).all()
    # Each open and click of their mail kept their user agent and network: those go entirely
    # (the campaigns' figures are in their summaries, not counted from the hits).
    session.execute(
        delete(TrackingHit)
        .where(
            TrackingHit.tenant_id == tenant_id,
            TrackingHit.message_id.in_(select(Message.id).where(theirs)),
        )
        .execution_options(synchronize_session=False)
    )
    for message_id, last_error, reference, key in rows:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(
                to_address=hashed,
                contact_id=None,
                subject=None,
                html=None,
                text=None,
                data=null(),
                last_error=scrub(last_error),
                reference=scrub(reference),
                idempotency_key=scrub(key),
            )
            .execution_options(synchronize_session=False)
        )
    return len(rows), int(cancelled or 0)


def _mentions(column: Any, needle: str) -> ColumnElement[bool]:
    return func.lower(column).contains(needle, autoescape=True)


def _rewrite_text(
    session: Session,
    model: Any,
    column: Any,
    scope: list[ColumnElement[bool]],
    needle: str,
    scrub: Any,
) -> int:
    """Replace the address in ``column`` of the rows in ``scope`` that mention it; how many."""
    rows = session.execute(select(model.id, column).where(*scope, _mentions(column, needle))).all()
    for row_id, value in rows:
        session.execute(
            update(model)
            .where(model.id == row_id)
            .values({column.key: scrub(value)})
            .execution_options(synchronize_session=False)
        )
    return len(rows)


def _erase_webhook_payloads(session: Session, tenant_id: int, needle: str, scrub: Any) -> int:
    """Deliveries report events with the recipient's address; their JSON payload is rewritten
    through its text, and so is the endpoint's last answer (which may echo it)."""
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.payload, WebhookDelivery.last_status).where(
            WebhookDelivery.tenant_id == tenant_id,
            or_(
                _mentions(cast(WebhookDelivery.payload, Text), needle),
                _mentions(WebhookDelivery.last_status, needle),
            ),
        )
    ).all()
    for row_id, payload, last_status in rows:
        text = json.dumps(payload, ensure_ascii=False)
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == row_id)
            .values(payload=json.loads(scrub(text)), last_status=scrub(last_status))
            .execution_options(synchronize_session=False)
        )
    return len(rows)


def _hash_suppressions(
    session: Session, tenant_id: int, needle: str, hashed: str, scrub: Any, now: datetime
) -> str:
    """Replace the address's entries (any case) by one hashed entry; the reason it keeps."""
    listed = session.execute(
        select(Suppression.id, Suppression.reason).where(
            Suppression.tenant_id == tenant_id,
            or_(func.lower(Suppression.email) == needle, Suppression.email == hashed),
        )
    ).all()
    reason = max(
        (r for _, r in listed),
        key=lambda r: _REASON_STRENGTH.get(r, 1),
        default=SuppressionReason.manual.value,
    )
    if listed:
        session.execute(delete(Suppression).where(Suppression.id.in_([i for i, _ in listed])))
    session.add(
        Suppression(
            tenant_id=tenant_id, email=hashed, reason=reason, detail=ERASED_DETAIL, created_at=now
        )
    )
    session.flush()
    _rewrite_text(
        session,
        Suppression,
        Suppression.detail,
        [Suppression.tenant_id == tenant_id],
        needle,
        scrub,
    )
    return reason
