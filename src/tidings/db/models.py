"""The SQLAlchemy models: every row belongs to one tenant (``tenant_id``), and every query filters on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import (
    false as sql_false,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings.db.types import BigId, Json, NullableJson, UTCDateTime

# Stable constraint names, so that Alembic batch migrations on SQLite can find them again.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _present(name: str, *columns: str, unique: bool = False) -> Index:
    """An index of the rows whose last column is not NULL."""
    where = sql_text(f"{columns[-1]} IS NOT NULL")
    return Index(name, *columns, unique=unique, postgresql_where=where, sqlite_where=where)


def _id() -> Mapped[int]:
    """A primary key that never hands out an id twice, even after the row with the highest id
    was deleted: an identity column on PostgreSQL, ``AUTOINCREMENT`` on SQLite (see
    ``_never_reuse_ids`` and migration 0009). A reused id would let whatever still names the old
    row (a message's template, a link in a mail) reach another row, even another tenant's."""
    return mapped_column(BigId, Identity(), primary_key=True)


def _tenant_fk() -> Mapped[int]:
    return mapped_column(BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TenantSettings(Base):
    """A tenant's preferences that are not limits: one row per tenant, a column per setting, so
    that a new setting is a new column with a default (no row means every default)."""

    __tablename__ = "tenant_settings"

    tenant_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    # IANA name: sending windows in "contact" time fall back to it, the dashboard shows times in it.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Open and click tracking (migration 0019): off unless turned on; a campaign or a message
    # may say otherwise (their own nullable columns: null = this setting).
    track_opens: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_false())
    track_clicks: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_false())
    #: VERP: bounces come back to ``bounces+<token>@<bounce_domain>`` (SMTP MAIL FROM) when set.
    bounce_domain: Mapped[str | None] = mapped_column(String(253), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)  # shown to people, finds the row
    key_hash: Mapped[str] = mapped_column(
        String(128)
    )  # sha256 of the whole key; the key itself is never stored
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_api_keys_tenant", "tenant_id", "id"),)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    email: Mapped[str] = mapped_column(String(320))  # normalised: domain lower-cased, IDNA
    name: Mapped[str | None] = mapped_column(String(300), nullable=True)
    first_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("tenant_id", "email", name="uq_contacts_tenant_email"),
        Index("ix_contacts_tenant_status", "tenant_id", "status", "id"),
    )


# A tenant's contacts in id order, for keyset pages, on SQLite only (migration 0024 says why).
Index("ix_contacts_tenant_id", Contact.tenant_id, Contact.id).ddl_if(dialect="sqlite")


# Segment filters' eq/in on an attribute are ``attributes @> {...}`` (queue/segments.py), which
# this answers on PostgreSQL; SQLite has no such index and reads the JSON text (migration 0020).
Index(
    "ix_contacts_attributes",
    Contact.attributes,
    postgresql_using="gin",
    postgresql_ops={"attributes": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")


class ContactList(Base):
    __tablename__ = "lists"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Public sign-up (migration 0022, services/signups.py): whether /s/{public_id} takes sign-ups,
    # and whether they wait for the confirmation link. ``public_id`` is random and unguessable,
    # never the numeric id, so one list's form says nothing about the tenant's other lists.
    double_opt_in: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=sql_text("false")
    )
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_text("false"))
    public_id: Mapped[str | None] = mapped_column(String(32), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_lists_tenant_name"),
        # An index, not a constraint: SQLite adds it without rebuilding the table.
        Index("uq_lists_public_id", "public_id", unique=True),
    )


class ListMember(Base):
    __tablename__ = "list_members"

    list_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    # Redundant with list_id (a list belongs to one tenant), and an import checks every row.
    tenant_id: Mapped[int] = mapped_column(BigId, nullable=False)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_list_members_contact", "contact_id"),)


class Segment(Base):
    """A saved filter over the tenant's contacts (domain/segment_filter.py), evaluated when used."""

    __tablename__ = "segments"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    filter: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_segments_tenant_name"),)


class Signup(Base):
    """A public sign-up waiting for its confirmation link (double opt-in): the list and the
    categories chosen, and the confirmation message whose link confirms it. One per list and
    contact (signing up again replaces it); purged after ``signups.PENDING_DAYS``."""

    __tablename__ = "signups"

    list_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[int] = _tenant_fk()
    message_id: Mapped[int | None] = mapped_column(BigId, nullable=True)  # the confirmation mail
    name: Mapped[str | None] = mapped_column(String(300), nullable=True)  # as typed in the form
    categories: Mapped[list[str]] = mapped_column(Json, default=list)  # the ones ticked
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The confirmation link names its message.
        Index("ix_signups_tenant_message", "tenant_id", "message_id"),
        # The purge of unconfirmed sign-ups reads the oldest first.
        Index("ix_signups_created_at", "created_at"),
        Index("ix_signups_contact", "contact_id"),
    )


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The sender and the extras (reply_to, headers, attachments: services/message_features.py)
    # its campaigns and messages take unless they give their own (migration 0018).
    from_address: Mapped[str | None] = mapped_column(String(400), nullable=True)
    features: Mapped[dict[str, Any] | None] = mapped_column(NullableJson, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_templates_tenant_name"),)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    template_id: Mapped[int] = mapped_column(BigId, ForeignKey("templates.id", ondelete="RESTRICT"))
    list_ids: Mapped[list[int]] = mapped_column(Json, default=list)
    contact_ids: Mapped[list[int]] = mapped_column(Json, default=list)
    segment_ids: Mapped[list[int]] = mapped_column(Json, default=list, server_default="[]")
    # The segments' filters as they were at start ({"any": [...]}), so that every fan-out chunk,
    # written later by workers, reads the same audience even if a segment is edited meanwhile.
    segment_filter: Mapped[dict[str, Any] | None] = mapped_column(NullableJson, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    from_address: Mapped[str | None] = mapped_column(String(400), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    recipient_count: Mapped[int] = mapped_column(Integer, default=0)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The local hours its messages may start in (scheduling.windows.SendWindow.to_json), or null.
    send_window: Mapped[dict[str, Any] | None] = mapped_column(NullableJson, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # While its fan-out goes on (``preparing``, or ``paused`` meanwhile): the last contact id whose
    # message is written, and the lease of the worker writing the next chunk (queue/fanout.py).
    fanout_cursor: Mapped[int | None] = mapped_column(BigId, nullable=True)
    preparing_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # reply_to, headers and attachment references (services/message_features.py), or null; its
    # messages read them from here, so a 100,000-recipient campaign stores them once.
    features: Mapped[dict[str, Any] | None] = mapped_column(NullableJson, nullable=True)
    # Tracking overrides (migration 0019): null = the tenant's setting.
    track_opens: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    track_clicks: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    __table_args__ = (
        Index("ix_campaigns_tenant", "tenant_id", "id"),
        Index("ix_campaigns_status_scheduled", "status", "scheduled_at"),
    )


class Message(Base):
    """One email to one recipient: the queue row and, once final, its record."""

    __tablename__ = "messages"

    id: Mapped[int] = _id()
    # No foreign keys: this is the hottest table, and a fan-out of 100,000 rows spent most of its
    # time checking them. Tenants and campaigns are never deleted; a deleted template fails its
    # unsent messages at render time; delete_contact detaches a contact's messages itself.
    # See migrations 0005 and 0006.
    tenant_id: Mapped[int] = mapped_column(BigId, nullable=False)
    campaign_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    contact_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    to_address: Mapped[str] = mapped_column(String(320))
    template_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # Inline content of a transactional message sent without a stored template.
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    from_address: Mapped[str | None] = mapped_column(String(400), nullable=True)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Its sending window as given (``timezone`` may be "contact"), and the zone it is read in,
    # resolved when queued: the contact's, else the tenant's, else UTC. Both null: any time.
    send_window: Mapped[dict[str, Any] | None] = mapped_column(NullableJson, nullable=True)
    window_timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expiries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    message_id_header: Mapped[str | None] = mapped_column(
        String(400), nullable=True
    )  # kept across retries
    provider_message_id: Mapped[str | None] = mapped_column(String(400), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A reminder (migration 0013): the time of its event, which its template may show, and how
    # long before it the reminder goes out; one message per (tenant, reference, offset).
    event_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reminder_offset: Mapped[int | None] = mapped_column(Integer, nullable=True)  # seconds
    # A transactional message's reply_to, headers and attachment references, or a campaign test
    # send's (services/message_features.py); null for a campaign's messages and plain ones.
    features: Mapped[dict[str, Any] | None] = mapped_column(NullableJson, nullable=True)
    # Tracking overrides of a transactional message (migration 0019): null = its campaign's, else
    # the tenant's setting. A campaign's messages leave them null (the fan-out writes nothing).
    track_opens: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    track_clicks: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # What became of it after it left (migration 0023), summed per campaign into
    # ``campaign_results`` by triggers: when it was delivered (the SMTP 250, or the provider's
    # confirmation), how it bounced (``BounceKind``: hard, soft), when a complaint came in.
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    bounce: Mapped[str | None] = mapped_column(String(4), nullable=True)
    complained_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A person's first open and first click of it (migration 0025), set by the tracking flush;
    # machines' hits never set them. Kept when the hits are purged.
    first_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    first_clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The reaper: expired leases.
        Index(
            "ix_messages_lease",
            "lease_expires_at",
            postgresql_where=sql_text("status = 'sending'"),
            sqlite_where=sql_text("status = 'sending'"),
        ),
        # Campaign progress: grouped counts per status.
        Index("ix_messages_campaign_status", "campaign_id", "status", "id"),
        # The next four are partial (migration 0007): a campaign's rows have no reference or
        # idempotency key, and no Message-ID or provider id until sent, so a fan-out of 100,000
        # does not write 400,000 index entries for NULLs. ``column = value`` implies
        # ``column IS NOT NULL``, so both databases use them for every look-up made.
        _present("ix_messages_tenant_reference", "tenant_id", "reference"),
        # Bounce and complaint reports name the original by its Message-ID.
        _present("ix_messages_message_id_header", "message_id_header"),
        # Provider events (Resend's webhooks) name the message by the provider's id.
        _present("ix_messages_provider_message_id", "provider_message_id"),
        _present("uq_messages_tenant_idempotency", "tenant_id", "idempotency_key", unique=True),
        # A repeated reminder request can never make a second message for the same offset.
        _present(
            "uq_messages_tenant_reminder", "tenant_id", "reference", "reminder_offset", unique=True
        ),
        # Frequency caps count a contact's recent messages.
        Index("ix_messages_contact_sent", "contact_id", "sent_at"),
        Index("ix_messages_tenant_id", "tenant_id", "id"),
        # A repeated fan-out can never enqueue the same recipient twice.
        UniqueConstraint("campaign_id", "contact_id", name="uq_messages_campaign_contact"),
        # Segments of a campaign's openers / clickers: only the messages a person engaged with.
        Index(
            "ix_messages_campaign_opened",
            "campaign_id",
            "contact_id",
            postgresql_where=sql_text("first_opened_at IS NOT NULL"),
            sqlite_where=sql_text("first_opened_at IS NOT NULL"),
        ),
        Index(
            "ix_messages_campaign_clicked",
            "campaign_id",
            "contact_id",
            postgresql_where=sql_text("first_clicked_at IS NOT NULL"),
            sqlite_where=sql_text("first_clicked_at IS NOT NULL"),
        ),
    )


# The claim: a tenant's ready messages in exactly the claim's order (see queue/claim.py), so the
# per-tenant LIMIT reads the first rows of the index and stops.
Index(
    "ix_messages_claim",
    Message.tenant_id,
    Message.priority.desc(),
    Message.not_before,
    Message.id,
    postgresql_where=sql_text("status = 'queued'"),
    sqlite_where=sql_text("status = 'queued'"),
)


class MessageCount(Base):
    """How many messages a tenant has in a status: one row per shard, kept by database triggers
    (migration 0014), summed by readers (``queue.status``)."""

    __tablename__ = "message_counts"

    tenant_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class Attachment(Base):
    """The content of an attachment, stored once per tenant and content (its SHA-256): campaigns,
    templates and messages name it by id with their own filename and content type, so a campaign
    to 100,000 recipients with a 2 MB syllabus stores 2 MB."""

    __tablename__ = "attachments"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    sha256: Mapped[str] = mapped_column(String(64))  # hex
    size: Mapped[int] = mapped_column(Integer)  # bytes, decoded
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("tenant_id", "sha256", name="uq_attachments_tenant_sha256"),)


class CampaignCount(Base):
    """How many of a campaign's messages are in a status: one row per shard, kept by the same
    triggers as ``message_counts`` (migrations 0014, 0019), summed by readers (campaign stats)."""

    __tablename__ = "campaign_counts"

    campaign_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class CampaignResult(Base):
    """How many of a campaign's messages were delivered, bounced hard or soft, complained, or wait
    for the provider's word (``RESULTS`` of migration 0023): one row per shard, kept by the
    ``messages`` triggers like ``campaign_counts``, summed by readers (campaign stats)."""

    __tablename__ = "campaign_results"

    campaign_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    result: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class Event(Base):
    """Append-only history of a message (and campaign-level happenings when ``message_id`` is null)."""

    __tablename__ = "events"

    id: Mapped[int] = _id()
    # Append-only, one or more rows per attempt: no foreign keys (migration 0006); what they point
    # at is never deleted.
    tenant_id: Mapped[int] = mapped_column(BigId, nullable=False)
    message_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    campaign_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    #: The contact, for an event about a person rather than a message (an unsubscribe); a
    #: message's events name theirs through the message.
    contact_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    type: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_events_message", "message_id", "id"),
        Index("ix_events_tenant", "tenant_id", "id"),
        # The reputation guardrails count a running campaign's bounces and complaints every
        # second: this index holds only those (and guardrail pauses), never the many ``sent``
        # events. The condition is repeated verbatim in queue/guardrails.py (SIGNAL_EVENTS_SQL).
        Index(
            "ix_events_campaign_signal",
            "campaign_id",
            "type",
            "message_id",
            postgresql_where=sql_text("type IN ('bounced', 'complained', 'campaign_paused')"),
            sqlite_where=sql_text("type IN ('bounced', 'complained', 'campaign_paused')"),
        ),
        # Events about a person (an unsubscribe, an erasure), for GDPR access; most events have
        # no contact, so the partial index stays small and message events never write to it.
        _present("ix_events_contact", "contact_id"),
    )


class TrackingHit(Base):
    """One open or click of a tracked mail, as the public routes saw it and the flush classified
    it (``tracking/record.py``). Append-only; purged with the rest of the history."""

    __tablename__ = "tracking_hits"

    id: Mapped[int] = _id()
    # No foreign keys, like ``events``: written in batches on the public routes' behalf, and what
    # they name is never deleted while they are kept.
    tenant_id: Mapped[int] = mapped_column(BigId, nullable=False)
    message_id: Mapped[int] = mapped_column(BigId, nullable=False)
    campaign_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    kind: Mapped[str] = mapped_column(String(8))  # open | click (the honeypot: a click, index 0)
    link_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    machine: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)  # why machine
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)
    network: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a /24 or a /48
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # The flush reads a message's earlier hits (uniqueness, bursts of clicks).
        Index("ix_tracking_hits_message", "message_id", "id"),
        Index("ix_tracking_hits_created", "created_at"),
    )


class CampaignEngagement(Base):
    """A campaign's opens and clicks, kept by the flush in the transaction that records the hits,
    so that its statistics never scan the hits."""

    __tablename__ = "campaign_engagement"

    campaign_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigId, nullable=False)
    opens_unique: Mapped[int] = mapped_column(BigInteger, default=0)  # messages a person opened
    opens_total: Mapped[int] = mapped_column(BigInteger, default=0)  # people's opens, repeats too
    opens_machine: Mapped[int] = mapped_column(BigInteger, default=0)  # machines' opens
    clicks_unique: Mapped[int] = mapped_column(
        BigInteger, default=0
    )  # messages a person clicked in
    clicks_total: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks_machine: Mapped[int] = mapped_column(BigInteger, default=0)
    # Recipients who unsubscribed through a link in this campaign's mail (services/preferences).
    unsubscribes: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CampaignLink(Base):
    """One tracked link of a campaign's mail (by its place in the mail), with its clicks."""

    __tablename__ = "campaign_links"

    campaign_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    link_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigId, nullable=False)
    url: Mapped[str] = mapped_column(Text)
    clicks_unique: Mapped[int] = mapped_column(BigInteger, default=0)  # messages, by people
    clicks_total: Mapped[int] = mapped_column(BigInteger, default=0)  # people's clicks
    clicks_machine: Mapped[int] = mapped_column(BigInteger, default=0)


class CampaignTimeline(Base):
    """A campaign's opens and clicks per minute; statistics fold them into wider intervals."""

    __tablename__ = "campaign_timeline"

    campaign_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(BigId, nullable=False)
    opens: Mapped[int] = mapped_column(BigInteger, default=0)  # people's
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    opens_machine: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks_machine: Mapped[int] = mapped_column(BigInteger, default=0)


class RetentionCursor(Base):
    """How far the retention purge has gone through one table (``queue/retention.py``): every row
    with an id up to ``last_id`` is done, so a pass never reads them again."""

    __tablename__ = "retention_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # "message_bodies", "events"
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Throttle(Base):
    """A tenant's sending limits (null = no limit) and the shared GCRA state that enforces them."""

    __tablename__ = "throttles"

    tenant_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    per_second: Mapped[int | None] = mapped_column(Integer, nullable=True)
    per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    per_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)
    per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Admission state of each limit by name ("second", "minute" ...; delivery/throttle.py), on
    # the database's clock: the per-second spacing's next slot, the longer windows' bucket counts.
    window_state: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    # Until when the claim skips this tenant (limit reached, or the provider asked us to slow down).
    blocked_until: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DomainThrottle(Base):
    """A tenant's limit for one recipient domain (e.g. at most 20 per minute to outlook.com)."""

    __tablename__ = "domain_throttles"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    domain: Mapped[str] = mapped_column(String(255))
    per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    per_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Admission state of each limit by name ("minute", "hour"), as ``Throttle.window_state``.
    window_state: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)

    __table_args__ = (
        UniqueConstraint("tenant_id", "domain", name="uq_domain_throttles_tenant_domain"),
    )


class DomainRate(Base):
    """A tenant's adaptive rate for one recipient domain that told us to slow down (421, 4.7.x,
    429): lowered by slow-down replies, raised by streaks of successes (``delivery/adaptive.py``).
    A domain that never slowed us down has no row, and costs the claim nothing."""

    __tablename__ = "domain_rates"

    tenant_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    rate: Mapped[float] = mapped_column(Float)  # messages per second
    state: Mapped[str] = mapped_column(String(16))  # backing_off | probing | steady
    successes: Mapped[int] = mapped_column(Integer, default=0)  # the streak so far
    slowed_from: Mapped[float] = mapped_column(Float)  # the rate that last drew a slow-down
    # Seconds since the epoch on the database's clock, like the GCRA state of ``throttles``.
    last_slowdown_at: Mapped[float] = mapped_column(Float)
    tat: Mapped[float] = mapped_column(Float, default=0.0)  # GCRA state for spacing 1 / rate
    paused_until: Mapped[float] = mapped_column(Float, default=0.0)  # Retry-After
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # Rows quiet for long are forgotten (deleted) by the workers' maintenance pass.
    __table_args__ = (Index("ix_domain_rates_last_slowdown_at", "last_slowdown_at"),)


class Suppression(Base):
    __tablename__ = "suppressions"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    email: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("tenant_id", "email", name="uq_suppressions_tenant_email"),)


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_categories_tenant_name"),)


class Preference(Base):
    """A contact's choice for one category; no row means subscribed."""

    __tablename__ = "preferences"

    contact_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = _tenant_fk()
    subscribed: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(Json, default=list)
    secret: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_status: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_webhook_endpoints_tenant", "tenant_id", "id"),)


class TenantTransport(Base):
    """One of a tenant's own sending accounts (an SMTP relay, a Resend key): when a tenant has any,
    its mail goes only through them, lowest ``priority`` first, shared by ``weight`` within one."""

    __tablename__ = "tenant_transports"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    #: The URL with its credentials, sealed (``sealing.py``, purpose ``transport:tenant=<id>``).
    url_sealed: Mapped[str] = mapped_column(Text)
    #: The URL with its password or API key masked: what reads show, and all a log may name.
    url_masked: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=1)  # 1 is tried first
    weight: Mapped[int] = mapped_column(Integer, default=1)  # share of its priority's mail
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row, since the last success
    next_probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("tenant_id", "name", name="uq_tenant_transports_tenant_name"),
        Index("ix_tenant_transports_tenant", "tenant_id", "priority", "id"),
    )


class WebhookDelivery(Base):
    """One event on its way to one of the tenant's endpoints: an outbox row, retried with backoff."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    endpoint_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    # The ``events`` row it reports (null for deliveries not born from an event).
    event_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(
        String(16), default="pending"
    )  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_status: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        # One delivery per event and endpoint, however often the events are routed.
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
    )


class WebhookCursor(Base):
    """The one row that says up to which ``events.id`` webhook deliveries have been created.

    Routing events to endpoints locks this row, so two dispatchers never route the same events.
    """

    __tablename__ = "webhook_cursor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InboundEvent(Base):
    """A provider event already processed (by its id), so a redelivered webhook changes nothing twice."""

    __tablename__ = "inbound_events"

    id: Mapped[int] = _id()
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True
    )
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_inbound_events_provider_event"),
    )


class FrequencyCap(Base):
    """At most ``max_per_day`` messages of one category to one contact in any rolling day."""

    __tablename__ = "frequency_caps"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    category: Mapped[str] = mapped_column(String(64))
    max_per_day: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(
        String(16), default="delay"
    )  # delay (wait for a slot) | suppress
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("tenant_id", "category", name="uq_frequency_caps_tenant_category"),
    )


class SenderDomain(Base):
    """A domain a tenant sends from, with its DKIM key (``services/domains.py``).

    Private keys are sealed (``sealing.py``, purpose ``dkim:tenant=<id>:domain=<domain>``); the
    public key is kept in clear for the DNS records. After a rotation the previous key stays
    (``previous_*``) until the next one: mail signed with it still verifies, and while the new
    record is not verified yet the previous key signs if it was verified (``previous_verified``).
    """

    __tablename__ = "sender_domains"

    id: Mapped[int] = _id()
    tenant_id: Mapped[int] = _tenant_fk()
    domain: Mapped[str] = mapped_column(String(253))  # lower-case ASCII (IDNA), no trailing dot
    algorithm: Mapped[str] = mapped_column(String(16))  # rsa-sha256 | ed25519-sha256
    selector: Mapped[str] = mapped_column(String(63))
    private_key: Mapped[str] = mapped_column(Text)  # sealed PEM
    public_key: Mapped[str] = mapped_column(Text)  # the p= value, base64
    status: Mapped[str] = mapped_column(String(16))  # pending | verified | failed
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it failed
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    previous_selector: Mapped[str | None] = mapped_column(String(63), nullable=True)
    previous_algorithm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    previous_private_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    previous_public_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    previous_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "domain", name="uq_sender_domains_tenant_domain"),
    )


class Worker(Base):
    """A running worker process, kept fresh by its heartbeat (for the dashboard and metrics)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


def _never_reuse_ids() -> None:
    """SQLite only honours ``Identity`` as a table option: ``sqlite_autoincrement`` on every table
    whose key is an ``_id()``."""
    for each in Base.metadata.tables.values():
        if any(column.identity is not None for column in each.primary_key.columns):
            each.dialect_kwargs["sqlite_autoincrement"] = True


_never_reuse_ids()


def table(model: type[Base]) -> Table:
    """The Core table of a model, for executemany statements (mapped classes expose it untyped)."""
    return cast(Table, model.__table__)
