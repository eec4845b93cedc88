"""Turning claimed queue rows into fully rendered ``OutgoingMessage``s, a batch at a time.

Everything a batch needs (its contacts, campaigns and templates) is read in three queries, each
row keyed by its tenant and id, so rendering costs no database round trip per message, and an edited
template is picked up by the next batch. ``prepare`` makes each message's render job, the render
pool renders the batch in its processes (which cache compiled templates by content), and
``finish`` builds the mail.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings import tokens
from tidings.config import Settings
from tidings.db.models import Campaign, Contact, Template
from tidings.db.tenancy import ids, owned
from tidings.db.timezones import tenant_timezones
from tidings.domain.message import OutgoingMessage
from tidings.errors import TidingsError
from tidings.queue.claimed import ClaimedMessage
from tidings.rendering import Recipient, RenderedContent
from tidings.rendering.pool import RenderJob, TemplateSource
from tidings.rendering.renderer import with_event
from tidings.tracking.rewrite import LinkRewriter, Tracking
from tidings.tracking.settings import TrackingDefaults, tenant_tracking

#: A row of the batch's context, named by its tenant and id together: an id alone could be a row
#: of another tenant (SQLite reused deleted ids before migration 0009).
RowKey = tuple[int, int]  # (tenant_id, id)


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What the batch's messages refer to, read once per batch, each row keyed by its tenant."""

    contacts: dict[RowKey, Recipient]
    campaigns: dict[RowKey, tuple[dict[str, Any], str | None, str | None]]  # data, from, category
    templates: dict[
        RowKey, tuple[datetime, str, str | None, str | None]
    ]  # updated_at, subject, html, text
    #: Each tenant's default time zone, for recipients without one of their own.
    timezones: dict[int, str]
    #: Each campaign's tracking overrides (None: the tenant's), and each tenant's settings.
    campaign_tracking: dict[RowKey, tuple[bool | None, bool | None]] = field(default_factory=dict)
    tracking: dict[int, TrackingDefaults] = field(default_factory=dict)


def _keys(messages: Sequence[ClaimedMessage], attribute: str) -> set[RowKey]:
    return {(m.tenant_id, v) for m in messages if (v := getattr(m, attribute)) is not None}


def load_context(session: Session, messages: Sequence[ClaimedMessage]) -> BatchContext:
    """Every row read is kept only under its own ``(tenant_id, id)``, and only when a message of
    that tenant asked for it (``db.tenancy``): a message can only ever see its own tenant's
    contact, campaign and template."""
    contact_keys = _keys(messages, "contact_id")
    campaign_keys = _keys(messages, "campaign_id")
    template_keys = _keys(messages, "template_id")
    timezones = tenant_timezones(session, {m.tenant_id for m in messages})
    contacts: dict[RowKey, Recipient] = {}
    if contact_keys:
        for row in session.connection().execute(
            select(
                Contact.id,
                Contact.tenant_id,
                Contact.email,
                Contact.name,
                Contact.first_name,
                Contact.last_name,
                Contact.attributes,
                Contact.created_at,
                Contact.timezone,
                Contact.locale,
            ).where(Contact.id.in_(ids(contact_keys)))
        ):
            if not owned(contact_keys, row.tenant_id, row.id):
                continue
            contacts[row.tenant_id, row.id] = Recipient(
                email=row.email,
                name=row.name,
                first_name=row.first_name,
                last_name=row.last_name,
                attributes=row.attributes or {},
                contact_id=row.id,
                contact_created=tokens.contact_stamp(row.created_at),
                timezone=row.timezone or timezones[row.tenant_id],
                locale=row.locale,
            )
    campaigns: dict[RowKey, tuple[dict[str, Any], str | None, str | None]] = {}
    campaign_tracking: dict[RowKey, tuple[bool | None, bool | None]] = {}
    if campaign_keys:
        for row in session.connection().execute(
            select(
                Campaign.id,
                Campaign.tenant_id,
                Campaign.data,
                Campaign.from_address,
                Campaign.category,
                Campaign.track_opens,
                Campaign.track_clicks,
            ).where(Campaign.id.in_(ids(campaign_keys)))
        ):
            if owned(campaign_keys, row.tenant_id, row.id):
                key = (row.tenant_id, row.id)
                campaigns[key] = (row.data or {}, row.from_address, row.category)
                campaign_tracking[key] = (row.track_opens, row.track_clicks)
    templates = (
        {
            (row.tenant_id, row.id): (row.updated_at, row.subject, row.html, row.text)
            for row in session.connection().execute(
                select(
                    Template.id,
                    Template.tenant_id,
                    Template.updated_at,
                    Template.subject,
                    Template.html,
                    Template.text,
                ).where(Template.id.in_(ids(template_keys)))
            )
            if owned(template_keys, row.tenant_id, row.id)
        }
        if template_keys
        else {}
    )
    return BatchContext(
        contacts=contacts,
        campaigns=campaigns,
        templates=templates,
        timezones=timezones,
        campaign_tracking=campaign_tracking,
        tracking=tenant_tracking(session, {m.tenant_id for m in messages}),
    )


@dataclass(frozen=True, slots=True)
class Prepared:
    """A claimed message made ready to render: its job, and what its mail needs besides."""

    job: RenderJob
    from_address: str | None
    category: str | None
    tracking: Tracking | None = None  # what to track once rendered; None: nothing


class Composer:
    """Turns claimed messages into mail around the render pool; one per worker."""

    def __init__(self, *, settings: Settings, secret_key: str) -> None:
        self._settings = settings
        self._secret = secret_key
        self._domain = parseaddr(settings.from_address)[1].rpartition("@")[2] or "localhost"
        self._links = LinkRewriter(secret=secret_key, public_url=settings.public_url)

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
        tenant_id = message.tenant_id
        campaign = context.campaigns.get((tenant_id, message.campaign_id or 0))
        if campaign is not None:
            campaign_data, campaign_from, campaign_category = campaign
            data.update(campaign_data)
            from_address = from_address or campaign_from
            category = category or campaign_category
        data.update(message.data or {})
        if message.template_id is not None:
            if (tenant_id, message.template_id) not in context.templates:
                raise TidingsError("its template was deleted")
            _, subject, html, text = context.templates[(tenant_id, message.template_id)]
            source = TemplateSource(subject=subject, html=html, text=text)
        elif message.subject is not None:
            source = TemplateSource(subject=message.subject, html=message.html, text=message.text)
        else:
            raise TidingsError("it has neither a template nor inline content")
        # The links in the mail act for this message's recipient (tokens.py).
        contact = context.contacts.get((tenant_id, message.contact_id or 0))
        recipient = (
            Recipient(
                email=message.to_address,
                message_id=message.id,
                timezone=context.timezones.get(tenant_id),
            )
            if contact is None
            else replace(contact, message_id=message.id)
        )
        # A reminder's template also sees its event's time.
        job = RenderJob(
            source, message.tenant_id, recipient, with_event(data, message.event_at), category
        )
        return Prepared(
            job=job,
            from_address=from_address,
            category=category,
            tracking=self._tracking(message, context),
        )

    @staticmethod
    def _tracking(message: ClaimedMessage, context: BatchContext) -> Tracking | None:
        """The message's own choice, else its campaign's, else its tenant's setting."""
        defaults = context.tracking.get(message.tenant_id, TrackingDefaults())
        campaign_opens, campaign_clicks = context.campaign_tracking.get(
            (message.tenant_id, message.campaign_id or 0), (None, None)
        )
        opens = next(
            v for v in (message.track_opens, campaign_opens, defaults.opens) if v is not None
        )
        clicks = next(
            v for v in (message.track_clicks, campaign_clicks, defaults.clicks) if v is not None
        )
        if not (opens or clicks):
            return None
        return Tracking(
            opens=opens, clicks=clicks, tenant_id=message.tenant_id, message_id=message.id
        )

    def finish(
        self,
        message: ClaimedMessage,
        prepared: Prepared,
        rendered: RenderedContent,
        now: datetime,
    ) -> OutgoingMessage:
        """The mail ready to send, with its rendered content."""
        category = prepared.category
        tenant_id = message.tenant_id
        recipient = prepared.job.recipient
        headers: tuple[tuple[str, str], ...] = ()
        if message.campaign_id is not None:
            token = tokens.make_token(
                self._secret,
                kind="unsubscribe",
                tenant_id=tenant_id,
                message_id=message.id,
                contact_created=recipient.contact_created,
                category=category,
                now=now,
            )
            headers = (
                ("List-Unsubscribe", f"<{self._settings.public_url}/u/{token}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ("X-Tidings-Campaign", str(message.campaign_id)),
            )
        header_id = self.message_id_header(message.id)
        html, text = rendered.html, rendered.text
        if prepared.tracking is not None:
            html, text = self._links.apply(prepared.tracking, html, text)
        return OutgoingMessage(
            message_id=message.id,
            tenant_id=tenant_id,
            from_address=prepared.from_address or self._settings.from_address,
            to_address=message.to_address,
            to_name=recipient.name,
            subject=rendered.subject,
            html=html,
            text=text,
            message_id_header=header_id,
            headers=headers,
            idempotency_key=message.idempotency_key or header_id,
        )
