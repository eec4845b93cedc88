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
from tidings.delivery import features as extras
from tidings.delivery.signing_keys import NO_KEYS, SigningKeys, TenantKeys
from tidings.domain.message import Attachment, DkimKey, OutgoingMessage
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
#: What a campaign's test send's subject starts with (services/campaign_tests.py).
TEST_SUBJECT_PREFIX = "[TEST] "


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
    #: Reply-To, headers and attachment references of the batch's campaigns and templates, and
    #: templates' own From (``delivery/features.py``); only the rows that have some.
    campaign_features: dict[RowKey, dict[str, Any]] = field(default_factory=dict)
    template_features: dict[RowKey, tuple[str | None, dict[str, Any] | None]] = field(
        default_factory=dict
    )
    #: Encoded contents of every attachment the batch names.
    attachments: dict[RowKey, extras.EncodedContent] = field(default_factory=dict)
    #: Each tenant's DKIM keys by sender domain (only when the worker signs).
    signing: dict[int, TenantKeys] = field(default_factory=dict)
    #: Each campaign's tracking overrides (None: the tenant's), and each tenant's settings.
    campaign_tracking: dict[RowKey, tuple[bool | None, bool | None]] = field(default_factory=dict)
    tracking: dict[int, TrackingDefaults] = field(default_factory=dict)


def _keys(messages: Sequence[ClaimedMessage], attribute: str) -> set[RowKey]:
    return {(m.tenant_id, v) for m in messages if (v := getattr(m, attribute)) is not None}


def load_context(
    session: Session,
    messages: Sequence[ClaimedMessage],
    attachments: extras.AttachmentCache | None = None,
    *,
    keys: SigningKeys | None = None,
) -> BatchContext:
    """Every row read is kept only under its own ``(tenant_id, id)``, and only when a message of
    that tenant asked for it (``db.tenancy``): a message can only ever see its own tenant's
    contact, campaign, template and attachments. ``attachments``: the worker's cache of encoded
    contents (a fresh one when not given)."""
    contact_keys = _keys(messages, "contact_id") | _test_contacts(messages)
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
    campaign_features: dict[RowKey, dict[str, Any]] = {}
    campaign_tracking: dict[RowKey, tuple[bool | None, bool | None]] = {}
    if campaign_keys:
        for row in session.connection().execute(
            select(
                Campaign.id,
                Campaign.tenant_id,
                Campaign.data,
                Campaign.from_address,
                Campaign.category,
                Campaign.features,
                Campaign.track_opens,
                Campaign.track_clicks,
            ).where(Campaign.id.in_(ids(campaign_keys)))
        ):
            if owned(campaign_keys, row.tenant_id, row.id):
                key = (row.tenant_id, row.id)
                campaigns[key] = (row.data or {}, row.from_address, row.category)
                campaign_tracking[key] = (row.track_opens, row.track_clicks)
                if row.features:
                    campaign_features[key] = row.features
    templates: dict[RowKey, tuple[datetime, str, str | None, str | None]] = {}
    template_features: dict[RowKey, tuple[str | None, dict[str, Any] | None]] = {}
    if template_keys:
        for row in session.connection().execute(
            select(
                Template.id,
                Template.tenant_id,
                Template.updated_at,
                Template.subject,
                Template.html,
                Template.text,
                Template.from_address,
                Template.features,
            ).where(Template.id.in_(ids(template_keys)))
        ):
            if owned(template_keys, row.tenant_id, row.id):
                key = (row.tenant_id, row.id)
                templates[key] = (row.updated_at, row.subject, row.html, row.text)
                if row.from_address or row.features:
                    template_features[key] = (row.from_address, row.features)
    wanted = _attachment_keys(messages, campaign_features, template_features)
    contents = (attachments or extras.AttachmentCache()).load(session, wanted) if wanted else {}
    signing = keys.for_tenants(session, {m.tenant_id for m in messages}) if keys else {}
    return BatchContext(
        contacts=contacts,
        campaigns=campaigns,
        templates=templates,
        timezones=timezones,
        campaign_features=campaign_features,
        template_features=template_features,
        attachments=contents,
        signing=signing,
        campaign_tracking=campaign_tracking,
        tracking=tenant_tracking(session, {m.tenant_id for m in messages}),
    )


def _attachment_keys(
    messages: Sequence[ClaimedMessage],
    campaign_features: dict[RowKey, dict[str, Any]],
    template_features: dict[RowKey, tuple[str | None, dict[str, Any] | None]],
) -> set[RowKey]:
    """Every attachment the batch's messages may carry, from wherever they name it."""
    wanted: set[RowKey] = set()
    for m in messages:
        wanted |= extras.references(
            m.tenant_id,
            (
                m.features,
                campaign_features.get((m.tenant_id, m.campaign_id or 0)),
                template_features.get((m.tenant_id, m.template_id or 0), (None, None))[1],
            ),
        )
    return wanted


def _test_contacts(messages: Sequence[ClaimedMessage]) -> set[RowKey]:
    """The contacts campaign test sends are rendered as (they are not sent to them)."""
    return {
        (m.tenant_id, int(m.features["test"]["contact_id"]))
        for m in messages
        if m.features and m.features.get("test") and m.features["test"].get("contact_id")
    }


@dataclass(frozen=True, slots=True)
class Prepared:
    """A claimed message made ready to render: its job, and what its mail needs besides."""

    job: RenderJob
    from_address: str | None
    category: str | None
    #: Reply-To, headers, attachments, test send (``delivery/features.py``); None: none of them.
    extras: extras.Extras | None = None
    files: tuple[Attachment, ...] = ()
    dkim: DkimKey | None = None  # the sender domain's key: its mail is signed
    unsigned: str | None = None  # why it is not (a warning event when it is sent)
    tracking: Tracking | None = None  # what to track once rendered; None: nothing


class Composer:
    """Turns claimed messages into mail around the render pool; one per worker."""

    def __init__(self, *, settings: Settings, secret_key: str) -> None:
        self._settings = settings
        self._secret = secret_key
        self._domain = parseaddr(settings.from_address)[1].rpartition("@")[2] or "localhost"
        #: Attachment contents, encoded once per worker and file (``delivery/features.py``).
        self.attachments = extras.AttachmentCache()
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
        template_from, template_features = None, None
        if message.template_id is not None:
            if (tenant_id, message.template_id) not in context.templates:
                raise TidingsError("its template was deleted")
            _, subject, html, text = context.templates[(tenant_id, message.template_id)]
            source = TemplateSource(subject=subject, html=html, text=text)
            template_from, template_features = context.template_features.get(
                (tenant_id, message.template_id), (None, None)
            )
            from_address = from_address or template_from
        elif message.subject is not None:
            source = TemplateSource(subject=message.subject, html=message.html, text=message.text)
        else:
            raise TidingsError("it has neither a template nor inline content")
        campaign_extras = (
            context.campaign_features.get((tenant_id, message.campaign_id or 0))
            if context.campaign_features
            else None
        )
        # Almost every message has none of these: it skips the call.
        decided = (
            extras.decide(template_features, campaign_extras, message.features)
            if template_features or campaign_extras or message.features
            else None
        )
        files = (
            extras.attachments_of(decided, tenant_id, context.attachments)
            if decided is not None and decided.attachments
            else ()
        )
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
        if decided is not None and decided.test is not None:
            # A test send: as its contact would get it, with inert links (no message of theirs).
            contact = context.contacts.get((tenant_id, decided.test.get("contact_id") or 0))
            recipient = replace(contact or recipient, message_id=None)
        # A reminder's template also sees its event's time.
        job = RenderJob(
            source, message.tenant_id, recipient, with_event(data, message.event_at), category
        )
        sender = from_address or self._settings.from_address
        keys = context.signing.get(tenant_id, NO_KEYS)
        dkim = keys.for_sender(sender)
        if dkim is None and self._settings.require_verified_from:
            # Checked again here, not only when the API accepts a message: this holds for every
            # way mail is queued, and for a domain deleted after its mail was accepted.
            raise TidingsError(
                f"the From domain of {sender} is not a verified sender domain of this tenant "
                "(TIDINGS_REQUIRE_VERIFIED_FROM is on)"
            )
        unsigned = (
            f"sent without DKIM: the From domain of {sender} is not a verified sender domain "
            "of this tenant"
            if dkim is None and keys.has_domains
            else None
        )
        return Prepared(
            job=job,
            from_address=from_address,
            category=category,
            extras=decided,
            files=files,
            dkim=dkim,
            unsigned=unsigned,
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
        subject = rendered.subject
        reply_to = None
        decided = prepared.extras
        if decided is not None:
            reply_to = decided.reply_to
            if decided.test is not None:
                subject = f"{TEST_SUBJECT_PREFIX}{subject}"
                headers = (
                    # The link of a test send shows the preview page and changes nothing.
                    (
                        "List-Unsubscribe",
                        f"<{tokens.preview_url(self._settings.public_url, 'unsubscribe')}>",
                    ),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                    ("X-Tidings-Test", str(decided.test.get("campaign_id"))),
                )
            headers += decided.headers
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
            subject=subject,
            html=html,
            text=text,
            message_id_header=header_id,
            headers=headers,
            idempotency_key=message.idempotency_key or header_id,
            reply_to=reply_to,
            attachments=prepared.files,
            dkim=prepared.dkim,
        )
