"""Transactional messages: accept one (validated and rendered once), look it up, cancel it or its group.

A message is rendered once at accept time with the given data, so that a template error or a
missing variable is the caller's 422 now, not a failed delivery later; the worker renders it again
when it sends (the contact may have changed in between).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from tidings.db.engine import end_reads
from tidings.db.models import Contact, Event, Message, Preference, Suppression, Template
from tidings.db.timezones import tenant_timezone
from tidings.domain import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    TRANSACTIONAL_PRIORITY_BOOST,
    MessageStatus,
)
from tidings.domain.addresses import MAX_ADDRESS_LENGTH, InvalidAddress, normalize_address
from tidings.errors import Conflict, InvalidInput, NotFound, RenderError
from tidings.queue.compliance import blocking_reason
from tidings.queue.enqueue import (
    Enqueued,
    NewMessage,
    cancel_unclaimed,
    enqueue_message,
    find_by_idempotency_key,
)
from tidings.rendering import Recipient, ResourceExhausted
from tidings.rendering.pool import RenderPool, TemplateSource
from tidings.rendering.renderer import with_event
from tidings.scheduling.windows import (
    FALLBACK_TIMEZONE,
    SendWindow,
    next_opening,
    resolve_timezone,
)
from tidings.services.message_features import (
    DEFAULT_MAX_ATTACHMENT_BYTES,
    FeaturesIn,
    has_control,
    store_features,
)
from tidings.services.pagination import Page, paginate

MAX_TTL_SECONDS = 30 * 86_400  # a message may keep retrying for at most 30 days
MIN_TTL_SECONDS = 60
#: How far ahead a message or a campaign may be scheduled.
MAX_SCHEDULE_AHEAD = timedelta(days=366)
MAX_REFERENCE_LENGTH = 200
MAX_CATEGORY_LENGTH = 64
MAX_IDEMPOTENCY_KEY_LENGTH = 200
MAX_SUBJECT_LENGTH = 998  # RFC 5322 line limit


@dataclass(frozen=True, slots=True)
class MessageRequest:
    """What a caller asks to send; ``to`` or ``contact_id``, ``template_id`` or inline content."""

    to: str | None = None
    contact_id: int | None = None
    template_id: int | None = None
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    category: str | None = None
    priority: int = DEFAULT_PRIORITY  # 0 (lowest) to 9, as the API takes it
    send_at: datetime | None = None  # None or in the past: now
    reference: str | None = None
    ttl_seconds: float | None = None  # None: the settings' message_ttl_seconds
    from_address: str | None = None
    idempotency_key: str | None = None
    #: A reminder's event (``services/reminders.py``): templates see it as ``event_at``.
    event_at: datetime | None = None
    #: Local hours it may start in; it waits for the next opening (after ``send_at``), read in
    #: the window's zone or, for "contact", the contact's, else the tenant's, else UTC.
    send_window: SendWindow | None = None
    #: Reply-To, extra headers and attachments (``services/message_features.py``).
    features: FeaturesIn = field(default_factory=FeaturesIn)
    track_opens: bool | None = None  # None: its campaign's, else the tenant's setting
    track_clicks: bool | None = None


# -- validation shared with campaigns ---------------------------------------------------------


def check_header_text(value: str | None, *, field: str, max_length: int) -> str | None:
    """A value that ends up in a header: no line breaks or other control characters (injection)."""
    if value is None:
        return None
    if has_control(value):
        raise InvalidInput(
            f"{field} must not contain line breaks or control characters", field=field
        )
    if not value.strip() or len(value) > max_length:
        raise InvalidInput(f"{field} must be 1 to {max_length} characters", field=field)
    return value


def normalise_address(value: str, *, field: str) -> str:
    """A bare recipient address in its one stored form (as contacts and suppressions hold it)."""
    check_header_text(value, field=field, max_length=MAX_ADDRESS_LENGTH)
    try:
        return normalize_address(value)
    except InvalidAddress as exc:
        raise InvalidInput(f"{field} is not a valid email address: {exc}", field=field) from exc


def check_mailbox(value: str | None, *, field: str) -> str | None:
    """A From mailbox, ``addr@example.com`` or ``Name <addr@example.com>``; normalised."""
    if value is None:
        return None
    check_header_text(value, field=field, max_length=400)
    try:
        valid = validate_email(
            value.strip(),
            check_deliverability=False,
            allow_display_name=True,
        )
    except EmailNotValidError as exc:
        raise InvalidInput(f"{field} is not a valid mailbox: {exc}", field=field) from exc
    address = valid.normalized
    if not valid.display_name:
        return address
    name = valid.display_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{name}" <{address}>'


def check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidInput(
            f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}", field="priority"
        )
    return priority


def check_schedule(when: datetime | None, *, field: str, now: datetime) -> datetime | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise InvalidInput(f"{field} needs a time zone, e.g. 2030-01-01T09:00:00Z", field=field)
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00, before the first representable instant
        raise InvalidInput(f"{field} is out of range", field=field) from None
    if when - now > MAX_SCHEDULE_AHEAD:
        raise InvalidInput(
            f"{field} may be at most {MAX_SCHEDULE_AHEAD.days} days ahead", field=field
        )
    return when


def tenant_template(*, session: Session, tenant_id: int, template_id: int) -> Template:
    template = session.scalar(
        select(Template).where(Template.tenant_id == tenant_id, Template.id == template_id)
    )
    if template is None:
        raise NotFound("no such template", field="template_id")
    return template


# -- the use cases ----------------------------------------------------------------------------


def send_message(
    *,
    session: Session,
    tenant_id: int,
    request: MessageRequest,
    renderer: RenderPool,
    default_ttl_seconds: float,
    now: datetime,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> Enqueued:
    """Accept one message: queued (or suppressed, with the reason); a repeated key returns the first."""
    key = check_header_text(
        request.idempotency_key, field="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH
    )
    if key is not None:
        earlier = find_by_idempotency_key(session=session, tenant_id=tenant_id, key=key)
        if earlier is not None:
            return Enqueued(message=earlier, created=False)
    new = prepare_message(
        session=session,
        tenant_id=tenant_id,
        request=request,
        renderer=renderer,
        default_ttl_seconds=default_ttl_seconds,
        now=now,
        max_attachment_bytes=max_attachment_bytes,
    )
    return enqueue_message(session=session, new=new, now=now)


def prepare_message(
    *,
    session: Session,
    tenant_id: int,
    request: MessageRequest,
    renderer: RenderPool,
    default_ttl_seconds: float,
    now: datetime,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> NewMessage:
    """The message to store for ``request``: every field checked, the recipient and template
    found, screened against suppressions and preferences, rendered once; nothing written yet but
    its attachments' contents (stored once per content, whatever becomes of the message).

    A caller that makes several messages of one request (a reminder's offsets) prepares once and
    stores each with its own time.
    """
    key = check_header_text(
        request.idempotency_key, field="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH
    )
    priority = check_priority(request.priority)
    category = check_header_text(request.category, field="category", max_length=MAX_CATEGORY_LENGTH)
    reference = check_header_text(
        request.reference, field="reference", max_length=MAX_REFERENCE_LENGTH
    )
    from_address = check_mailbox(request.from_address, field="from_address")
    reply_to = check_mailbox(request.features.reply_to, field="reply_to")
    ttl = _check_ttl(request.ttl_seconds, default=default_ttl_seconds)
    send_at = check_schedule(request.send_at, field="send_at", now=now)
    contact, to_address = _recipient(session=session, tenant_id=tenant_id, request=request)
    template = None
    if request.template_id is not None:
        template = tenant_template(
            session=session, tenant_id=tenant_id, template_id=request.template_id
        )
        category = category or template.category
    suppressed_reason = _suppression_reason(
        session=session,
        tenant_id=tenant_id,
        to_address=to_address,
        contact=contact,
        category=category,
    )
    # The tenant's zone is read only for a sending window: the render below only checks the
    # message (its output is not kept), and no check depends on the zone times are shown in.
    # The read was 9 % of the API's CPU at 200 requests a second.
    zone = (
        tenant_timezone(session, tenant_id)
        if request.send_window is not None
        else FALLBACK_TIMEZONE
    )
    not_before = max(send_at or now, now)
    # Read before rendering, which may end this transaction's reads (see _render_once).
    window_timezone = None
    if request.send_window is not None:
        window_timezone = resolve_timezone(
            request.send_window,
            contact_timezone=contact.timezone if contact is not None else None,
            tenant_timezone=zone,
        )
        not_before = next_opening(request.send_window, window_timezone, not_before)
    _render_once(
        session=session,
        renderer=renderer,
        request=request,
        template=template,
        tenant_id=tenant_id,
        recipient=_as_recipient(contact, to_address, zone),
        category=category,
    )
    features = store_features(
        session=session,
        tenant_id=tenant_id,
        given=replace(request.features, reply_to=reply_to),
        max_attachment_bytes=max_attachment_bytes,
        now=now,
    )
    return NewMessage(
        tenant_id=tenant_id,
        to_address=to_address,
        contact_id=contact.id if contact is not None else None,
        template_id=template.id if template is not None else None,
        subject=None if template is not None else request.subject,
        html=None if template is not None else request.html,
        text=None if template is not None else request.text,
        data=request.data,
        from_address=from_address,
        category=category,
        priority=priority + TRANSACTIONAL_PRIORITY_BOOST,
        not_before=not_before,
        expires_at=not_before + timedelta(seconds=ttl),
        idempotency_key=key,
        reference=reference,
        suppressed_reason=suppressed_reason,
        event_at=request.event_at,
        send_window=request.send_window.to_json() if request.send_window is not None else None,
        window_timezone=window_timezone,
        features=features,
        track_opens=request.track_opens,
        track_clicks=request.track_clicks,
    )


def get_message(*, session: Session, tenant_id: int, message_id: int) -> Message:
    message = session.scalar(
        select(Message).where(Message.tenant_id == tenant_id, Message.id == message_id)
    )
    if message is None:
        raise NotFound("no such message")
    return message


def message_events(*, session: Session, message: Message) -> list[Event]:
    """The message's history, oldest first."""
    return list(
        session.scalars(
            select(Event)
            .where(Event.tenant_id == message.tenant_id, Event.message_id == message.id)
            .order_by(Event.id)
        )
    )


def list_messages(
    *,
    session: Session,
    tenant_id: int,
    limit: int,
    cursor: str | None,
    status: MessageStatus | None = None,
    campaign_id: int | None = None,
    reference: str | None = None,
    contact_id: int | None = None,
) -> Page[Message]:
    """The tenant's messages, newest first, optionally of one status, campaign, reference or
    contact."""
    query = select(Message).where(Message.tenant_id == tenant_id)
    if contact_id is not None:
        query = query.where(Message.contact_id == contact_id)
    if status is not None:
        query = query.where(Message.status == status.value)
    if campaign_id is not None:
        query = query.where(Message.campaign_id == campaign_id)
    if reference is not None:
        query = query.where(Message.reference == reference)
    return paginate(session, query, Message.id, limit=limit, cursor=cursor, descending=True)


def cancel_message(*, session: Session, tenant_id: int, message_id: int, now: datetime) -> Message:
    """Cancel a message no worker has claimed yet; cancelling it again changes nothing."""
    message = get_message(session=session, tenant_id=tenant_id, message_id=message_id)
    cancelled = cancel_unclaimed(
        session=session,
        where=(Message.tenant_id == tenant_id) & (Message.id == message.id),
        now=now,
        record_events=True,
    )
    session.refresh(message)
    if not cancelled and message.status != MessageStatus.cancelled.value:
        raise Conflict(
            f"the message is {message.status} and can no longer be cancelled", field="status"
        )
    return message


def cancel_by_reference(*, session: Session, tenant_id: int, reference: str, now: datetime) -> int:
    """Cancel every message of a group that no worker has claimed yet (a moved meeting's reminders)."""
    check_header_text(reference, field="reference", max_length=MAX_REFERENCE_LENGTH)
    return cancel_unclaimed(
        session=session,
        where=(Message.tenant_id == tenant_id) & (Message.reference == reference),
        now=now,
        record_events=True,
    )


# -- helpers ----------------------------------------------------------------------------------


def _check_ttl(ttl_seconds: float | None, *, default: float) -> float:
    if ttl_seconds is None:
        return default
    if isinstance(ttl_seconds, bool) or not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidInput(
            f"ttl_seconds must be from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}", field="ttl_seconds"
        )
    return float(ttl_seconds)


# Statements every accepted message runs, built once: SQLAlchemy memoises a statement object's
# cache key, so a constant with bind parameters skips re-deriving it on every request.
_CONTACT_BY_ID = select(Contact).where(
    Contact.tenant_id == bindparam("tenant_id"), Contact.id == bindparam("contact_id")
)
_CONTACT_BY_EMAIL = select(Contact).where(
    Contact.tenant_id == bindparam("tenant_id"), Contact.email == bindparam("email")
)
_LISTED = select(Suppression.reason).where(
    Suppression.tenant_id == bindparam("tenant_id"), Suppression.email == bindparam("email")
)
_SUBSCRIBED = select(Preference.subscribed).where(
    Preference.contact_id == bindparam("contact_id"), Preference.category == bindparam("category")
)


def _recipient(
    *, session: Session, tenant_id: int, request: MessageRequest
) -> tuple[Contact | None, str]:
    """The contact (when there is one) and the address; a known address is linked to its contact."""
    if (request.to is None) == (request.contact_id is None):
        raise InvalidInput("give exactly one of to or contact_id", field="to")
    if request.contact_id is not None:
        contact = session.scalar(
            _CONTACT_BY_ID, {"tenant_id": tenant_id, "contact_id": request.contact_id}
        )
        if contact is None:
            raise NotFound("no such contact", field="contact_id")
        return contact, contact.email
    assert request.to is not None
    address = normalise_address(request.to, field="to")
    contact = session.scalar(_CONTACT_BY_EMAIL, {"tenant_id": tenant_id, "email": address})
    return contact, address


def _as_recipient(contact: Contact | None, address: str, default_zone: str) -> Recipient:
    if contact is None:
        return Recipient(
            email=address,
            name=None,
            first_name=None,
            last_name=None,
            attributes={},
            contact_id=None,
            timezone=default_zone,
        )
    return Recipient(
        email=contact.email,
        name=contact.name,
        first_name=contact.first_name,
        last_name=contact.last_name,
        attributes=dict(contact.attributes or {}),
        contact_id=contact.id,
        timezone=contact.timezone or default_zone,
        locale=contact.locale,
    )


def _render_once(
    *,
    session: Session,
    renderer: RenderPool,
    request: MessageRequest,
    template: Template | None,
    tenant_id: int,
    recipient: Recipient,
    category: str | None,
) -> None:
    if template is not None:
        if any(v is not None for v in (request.subject, request.html, request.text)):
            raise InvalidInput("give template_id or subject/html/text, not both", field="subject")
        source = TemplateSource(subject=template.subject, html=template.html, text=template.text)
    else:
        if request.subject is None:
            raise InvalidInput("subject is required without template_id", field="subject")
        check_header_text(request.subject, field="subject", max_length=MAX_SUBJECT_LENGTH)
        source = TemplateSource(subject=request.subject, html=request.html, text=request.text)
    if not renderer.renders_here(source):
        # Everything this request reads is read: the insert re-checks the idempotency key.
        end_reads(session)
    data = with_event(request.data, request.event_at)
    try:
        renderer.render(
            source, tenant_id=tenant_id, recipient=recipient, data=data, category=category
        )
    except RenderError as exc:
        if template is None or isinstance(exc, ResourceExhausted):
            raise  # a hard limit: the template's part is at fault, whatever the data
        # The stored template is fine; what it lacks comes from this request's data.
        raise RenderError(f"template {exc.field}: {exc.message}", field="data") from None


def _suppression_reason(
    *,
    session: Session,
    tenant_id: int,
    to_address: str,
    contact: Contact | None,
    category: str | None,
) -> str | None:
    """Why this message must not be sent, or None, by the same rules as the send-time screen."""
    listed = session.scalar(_LISTED, {"tenant_id": tenant_id, "email": to_address})
    opted_out = False
    if contact is not None and category is not None:
        subscribed = session.scalar(_SUBSCRIBED, {"contact_id": contact.id, "category": category})
        opted_out = subscribed is False
    return blocking_reason(
        bulk=category is not None,
        contact_status=contact.status if contact is not None else None,
        listed_reason=listed,
        category=category,
        opted_out=opted_out,
    )
