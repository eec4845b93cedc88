"""A campaign's test send: the campaign as one of its contacts would get it, to a few addresses of
the sender's own, before the real thing.

Each test is a transactional message (``campaign_id`` null), so the campaign's progress never
counts it, and it is claimed ahead of bulk mail (transactional priority). It names no contact
either (``contact_id`` null): a bounce or a frequency cap of the test address never touches the
contact it is rendered as, nor does the contact's status keep the test from going. What makes it
the campaign's is in its ``features`` (``{"test": {"campaign_id", "contact_id"}}`` beside the
campaign's own Reply-To, headers and attachments), which the worker reads (``delivery/compose``):
it renders the campaign's template with the campaign's data for that contact, prefixes the
subject with ``[TEST]``, and gives it inert links (``tokens.PREVIEW_TOKEN``). The test message is
no message of the contact's, so no working unsubscribe token can exist for it: its link shows the
preview page and changes nothing, for the test address or the contact.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.db.engine import end_reads
from tidings.db.models import Campaign, Contact, Message
from tidings.db.timezones import tenant_timezone
from tidings.domain import TRANSACTIONAL_PRIORITY_BOOST
from tidings.errors import InvalidInput, NotFound, RenderError
from tidings.queue.enqueue import NewMessage, enqueue_message
from tidings.rendering import Recipient, ResourceExhausted
from tidings.rendering.pool import RenderPool, TemplateSource
from tidings.services.campaigns import get_campaign
from tidings.services.messages import normalise_address, tenant_template

#: Addresses one test send may go to: the sender and a colleague or two, not an audience.
MAX_TEST_RECIPIENTS = 10


def send_campaign_test(
    *,
    session: Session,
    tenant_id: int,
    campaign_id: int,
    to: Sequence[str],
    contact_id: int | None,
    renderer: RenderPool,
    ttl_seconds: float,
    now: datetime,
) -> tuple[Campaign, list[Message]]:
    """Queue one test message per address; the campaign changes in nothing.

    Without ``contact_id`` the mail is rendered for the test address itself, as a message to an
    address that is not a contact would be.
    """
    campaign = get_campaign(session=session, tenant_id=tenant_id, campaign_id=campaign_id)
    if not to or len(to) > MAX_TEST_RECIPIENTS:
        raise InvalidInput(f"to must hold 1 to {MAX_TEST_RECIPIENTS} addresses", field="to")
    addresses = list(
        dict.fromkeys(normalise_address(a, field=f"to[{i}]") for i, a in enumerate(to))
    )
    zone = tenant_timezone(session, tenant_id)
    recipient = Recipient(email=addresses[0], timezone=zone)
    if contact_id is not None:
        contact = session.scalar(
            select(Contact).where(Contact.tenant_id == tenant_id, Contact.id == contact_id)
        )
        if contact is None:
            raise NotFound("no such contact", field="contact_id")
        recipient = Recipient(
            email=contact.email,
            name=contact.name,
            first_name=contact.first_name,
            last_name=contact.last_name,
            attributes=dict(contact.attributes or {}),
            contact_id=contact.id,
            timezone=contact.timezone or zone,
            locale=contact.locale,
        )
    template = tenant_template(
        session=session, tenant_id=tenant_id, template_id=campaign.template_id
    )
    source = TemplateSource(subject=template.subject, html=template.html, text=template.text)
    data = dict(campaign.data or {})
    features = {
        **(campaign.features or {}),
        "test": {"campaign_id": campaign.id, "contact_id": contact_id},
    }
    if not renderer.renders_here(source):
        end_reads(session)
    try:  # an error the test would fail with is the caller's 422 now
        renderer.render(
            source, tenant_id=tenant_id, recipient=recipient, data=data, category=campaign.category
        )
    except RenderError as exc:
        if isinstance(exc, ResourceExhausted):
            raise
        raise RenderError(f"template {exc.field}: {exc.message}", field="data") from None
    sent = []
    for address in addresses:
        enqueued = enqueue_message(
            session=session,
            new=NewMessage(
                tenant_id=tenant_id,
                to_address=address,
                contact_id=None,
                template_id=campaign.template_id,
                subject=None,
                html=None,
                text=None,
                data=data,
                from_address=campaign.from_address,
                category=None,
                priority=campaign.priority + TRANSACTIONAL_PRIORITY_BOOST,
                not_before=now,
                expires_at=now + timedelta(seconds=ttl_seconds),
                idempotency_key=None,
                reference=None,
                features=features,
            ),
            now=now,
        )
        sent.append(enqueued.message)
    return campaign, sent
