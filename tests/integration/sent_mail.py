"""Messages that were already sent, written straight into the database, for the tests of what
happens afterwards (bounces, complaints, webhooks)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from tidings import tokens
from tidings.db.engine import transaction
from tidings.db.models import (
    Campaign,
    Contact,
    Event,
    InboundEvent,
    Message,
    Suppression,
    Template,
    TrackingHit,
    WebhookDelivery,
)
from tidings.delivery.compose import Composer
from tidings.runtime import Runtime


@dataclass(frozen=True)
class SentMail:
    id: int
    tenant_id: int
    contact_id: int
    campaign_id: int | None
    email: str
    message_id_header: str  # as the worker wrote it into the message and the row


def message_id_header(runtime: Runtime, message_id: int) -> str:
    composer = Composer(settings=runtime.settings, secret_key=runtime.secret_key)
    return composer.message_id_header(message_id)


def seed_sent_mail(
    runtime: Runtime,
    tenant_id: int,
    email: str,
    *,
    campaign: bool = True,
    provider_message_id: str | None = None,
    store_header: bool = True,
) -> SentMail:
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        contact = Contact(
            tenant_id=tenant_id,
            email=email,
            attributes={},
            status="active",
            created_at=now,
            updated_at=now,
        )
        session.add(contact)
        session.flush()
        campaign_id = None
        if campaign:
            template = Template(
                tenant_id=tenant_id,
                name=f"t-{contact.id}",
                subject="Hello",
                html="<p>Hi</p>",
                created_at=now,
                updated_at=now,
            )
            session.add(template)
            session.flush()
            row = Campaign(
                tenant_id=tenant_id,
                name=f"c-{contact.id}",
                template_id=template.id,
                list_ids=[],
                contact_ids=[contact.id],
                data={},
                status="running",
                created_at=now,
            )
            session.add(row)
            session.flush()
            campaign_id = row.id
        message = Message(
            tenant_id=tenant_id,
            campaign_id=campaign_id,
            contact_id=contact.id,
            to_address=email,
            subject="Hello",
            status="sent",
            not_before=now,
            expires_at=now + timedelta(days=5),
            attempts=1,
            provider_message_id=provider_message_id,
            created_at=now,
            updated_at=now,
            sent_at=now,
        )
        session.add(message)
        session.flush()
        header = message_id_header(runtime, message.id)
        if store_header:
            message.message_id_header = header
        return SentMail(message.id, tenant_id, contact.id, campaign_id, email, header)


def sent_link(
    runtime: Runtime,
    tenant_id: int,
    *,
    contact_id: int | None = None,
    email: str | None = None,
    kind: tokens.TokenKind = "unsubscribe",
    category: str | None = None,
    secret: str | None = None,
    now: datetime | None = None,
) -> str:
    """The token of a link in a mail sent to the contact (or the ad-hoc address): the sent
    message is written first, as only a real send makes a working link (tokens.py)."""
    now = now or datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        contact = (
            session.scalar(select(Contact).where(Contact.id == contact_id))
            if contact_id is not None
            else None
        )
        address = contact.email if contact is not None else email or "gone@example.com"
        message = Message(
            tenant_id=tenant_id,
            contact_id=contact_id,
            to_address=address,
            subject="Hello",
            category=category,
            status="sent",
            not_before=now,
            expires_at=now + timedelta(days=5),
            attempts=1,
            created_at=now,
            updated_at=now,
            sent_at=now,
        )
        session.add(message)
        session.flush()
        return tokens.make_token(
            secret or runtime.secret_key,
            kind=kind,
            tenant_id=tenant_id,
            message_id=message.id,
            contact_created=(
                tokens.contact_stamp(contact.created_at)
                if contact is not None
                else (0 if contact_id is not None else None)
            ),
            category=category,
            now=now,
        )


@dataclass(frozen=True)
class Footprint:
    """Everything a bounce or complaint may change, to prove that nothing did."""

    suppressions: int
    events: int
    inbound_events: int
    contact_statuses: tuple[str, ...]
    message_statuses: tuple[str, ...]
    deliveries: int
    #: Each message's delivered_at, bounce and complained_at (migration 0023).
    message_results: tuple[tuple[object, ...], ...] = ()
    tracking_hits: int = 0


def footprint(runtime: Runtime) -> Footprint:
    with transaction(runtime.sessions) as session:

        def count(model: type) -> int:
            return session.scalar(select(func.count()).select_from(model)) or 0

        return Footprint(
            suppressions=count(Suppression),
            events=count(Event),
            inbound_events=count(InboundEvent),
            contact_statuses=tuple(session.scalars(select(Contact.status).order_by(Contact.id))),
            message_statuses=tuple(session.scalars(select(Message.status).order_by(Message.id))),
            deliveries=count(WebhookDelivery),
            message_results=tuple(
                tuple(row)
                for row in session.execute(
                    select(Message.delivered_at, Message.bounce, Message.complained_at).order_by(
                        Message.id
                    )
                )
            ),
            tracking_hits=count(TrackingHit),
        )


def events_of(runtime: Runtime, message_id: int) -> list[tuple[str, int | None, str | None]]:
    with transaction(runtime.sessions) as session:
        rows = session.execute(
            select(Event.type, Event.campaign_id, Event.detail)
            .where(Event.message_id == message_id)
            .order_by(Event.id)
        )
        return [(r.type, r.campaign_id, r.detail) for r in rows]


def suppressions_of(runtime: Runtime, tenant_id: int) -> list[tuple[str, str]]:
    with transaction(runtime.sessions) as session:
        rows = session.execute(
            select(Suppression.email, Suppression.reason)
            .where(Suppression.tenant_id == tenant_id)
            .order_by(Suppression.id)
        )
        return [(r.email, r.reason) for r in rows]


def status_of(runtime: Runtime, mail: SentMail) -> tuple[str, str, str | None]:
    """The contact's status, the message's status and its last error."""
    with transaction(runtime.sessions) as session:
        contact = session.get(Contact, mail.contact_id)
        message = session.get(Message, mail.id)
        assert contact is not None and message is not None
        return contact.status, message.status, message.last_error
