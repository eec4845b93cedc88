"""Turning claimed queue rows into fully rendered ``OutgoingMessage``s, a batch at a time.

Everything a batch needs (its contacts, campaigns and templates) is read in three queries, so
rendering costs no database round trip per message, and an edited template is picked up by the
next batch. ``prepare`` makes each message's render job, the render pool renders the batch in its
processes (which cache compiled templates by content), and ``finish`` builds the mail.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings import tokens
from tidings.config import Settings
from tidings.db.models import Campaign, Contact, Template
from tidings.domain.message import OutgoingMessage
from tidings.errors import TidingsError
from tidings.queue.claimed import ClaimedMessage
from tidings.rendering import Recipient, RenderedContent
from tidings.rendering.pool import RenderJob, TemplateSource


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What the batch's messages refer to, read once per batch."""

    contacts: dict[int, Recipient]
    campaigns: dict[int, tuple[dict[str, Any], str | None, str | None]]  # data, from, category
    templates: dict[
        int, tuple[datetime, str, str | None, str | None]
    ]  # updated_at, subject, html, text


def load_context(session: Session, messages: Sequence[ClaimedMessage]) -> BatchContext:
    contact_ids = {m.contact_id for m in messages if m.contact_id is not None}
    campaign_ids = {m.campaign_id for m in messages if m.campaign_id is not None}
    template_ids = {m.template_id for m in messages if m.template_id is not None}
    contacts: dict[int, Recipient] = {}
    if contact_ids:
        for row in session.execute(
            select(
                Contact.id,
                Contact.email,
                Contact.name,
                Contact.first_name,
                Contact.last_name,
                Contact.attributes,
            ).where(Contact.id.in_(contact_ids))
        ):
            contacts[row.id] = Recipient(
                email=row.email,
                name=row.name,
                first_name=row.first_name,
                last_name=row.last_name,
                attributes=row.attributes or {},
                contact_id=row.id,
            )
    campaigns = (
        {
            row.id: (row.data or {}, row.from_address, row.category)
            for row in session.execute(
                select(Campaign.id, Campaign.data, Campaign.from_address, Campaign.category).where(
                    Campaign.id.in_(campaign_ids)
                )
            )
        }
        if campaign_ids
        else {}
    )
    templates = (
        {
            row.id: (row.updated_at, row.subject, row.html, row.text)
            for row in session.execute(
                select(
                    Template.id, Template.updated_at, Template.subject, Template.html, Template.text
                ).where(Template.id.in_(template_ids))
            )
        }
        if template_ids
        else {}
    )
    return BatchContext(contacts=contacts, campaigns=campaigns, templates=templates)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A claimed message made ready to render: its job, and what its mail needs besides."""

    job: RenderJob
    from_address: str | None
    category: str | None


class Composer:
    """Turns claimed messages into mail around the render pool; one per worker."""

    def __init__(self, *, settings: Settings, secret_key: str) -> None:
        self._settings = settings
        self._secret = secret_key
        self._domain = parseaddr(settings.from_address)[1].rpartition("@")[2] or "localhost"

    def message_id_header(self, message_id: int) -> str:
        """Stable across retries without being stored first, unguessable, and unique per instance."""
        digest = hmac.new(
            self._secret.encode(), str(message_id).encode(), hashlib.sha256
        ).hexdigest()[:20]
        return f"<{message_id}.{digest}@{self._domain}>"

    def prepare(self, message: ClaimedMessage, context: BatchContext) -> Prepared:
        """The message's render job; raises ``TidingsError`` when it cannot be rendered (a
        permanent failure)."""
        data: dict[str, Any] = {}
        from_address = message.from_address
        category = message.category
        if message.campaign_id is not None and message.campaign_id in context.campaigns:
            campaign_data, campaign_from, campaign_category = context.campaigns[message.campaign_id]
            data.update(campaign_data)
            from_address = from_address or campaign_from
            category = category or campaign_category
        data.update(message.data or {})
        if message.template_id is not None:
            if message.template_id not in context.templates:
                raise TidingsError("its template was deleted")
            _, subject, html, text = context.templates[message.template_id]
            source = TemplateSource(subject=subject, html=html, text=text)
        elif message.subject is not None:
            source = TemplateSource(subject=message.subject, html=message.html, text=message.text)
        else:
            raise TidingsError("it has neither a template nor inline content")
        recipient = context.contacts.get(message.contact_id or 0) or Recipient(
            email=message.to_address
        )
        job = RenderJob(source, message.tenant_id, recipient, data, category)
        return Prepared(job=job, from_address=from_address, category=category)

    def finish(
        self,
        message: ClaimedMessage,
        prepared: Prepared,
        rendered: RenderedContent,
        now: datetime,
    ) -> OutgoingMessage:
        """The mail ready to send, with its rendered content."""
        category = prepared.category
        headers: tuple[tuple[str, str], ...] = ()
        if message.campaign_id is not None:
            token = tokens.make_token(
                self._secret,
                kind="unsubscribe",
                tenant_id=message.tenant_id,
                contact_id=message.contact_id,
                email=None if message.contact_id else message.to_address,
                category=category,
                now=now,
            )
            headers = (
                ("List-Unsubscribe", f"<{self._settings.public_url}/u/{token}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ("X-Tidings-Campaign", str(message.campaign_id)),
            )
        header_id = self.message_id_header(message.id)
        return OutgoingMessage(
            message_id=message.id,
            tenant_id=message.tenant_id,
            from_address=prepared.from_address or self._settings.from_address,
            to_address=message.to_address,
            to_name=prepared.job.recipient.name,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            message_id_header=header_id,
            headers=headers,
            idempotency_key=message.idempotency_key or header_id,
        )
