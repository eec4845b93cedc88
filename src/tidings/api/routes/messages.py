"""``/v1/messages``: transactional sends (idempotent with ``Idempotency-Key``), look-up and cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Header, Query, Response
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session

from tidings.api.deps import KeyFirstRoute, NowDep, RuntimeDep, SenderDep, SessionDep, ViewerDep
from tidings.api.schemas import (
    ERROR_RESPONSES,
    FeaturesFields,
    FeaturesOut,
    Id,
    IdPath,
    PageOut,
    SendWindowIn,
    SendWindowOut,
    StrictModel,
    send_window_of,
)
from tidings.db.models import Event, Message
from tidings.domain import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    TRANSACTIONAL_PRIORITY_BOOST,
    MessageStatus,
)
from tidings.services import domains, messages
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/messages", tags=["messages"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)


class MessageFields(StrictModel):
    """A message's recipient, content and handling: what a send and a reminder share."""

    to: str | None = Field(None, min_length=3, max_length=320, description="A bare address.")
    contact_id: Id | None = None
    template_id: Id | None = None
    subject: str | None = Field(None, max_length=messages.MAX_SUBJECT_LENGTH)
    html: str | None = None
    text: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="Template data.")
    category: str | None = Field(None, min_length=1, max_length=messages.MAX_CATEGORY_LENGTH)
    priority: int = Field(DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)
    from_address: str | None = Field(None, min_length=3, max_length=400)
    send_window: SendWindowIn | None = Field(
        None,
        description="Local hours it may start in; it waits for the next opening (a reminder with"
        " no opening before its event is skipped).",
    )
    track_opens: bool | None = Field(
        None, strict=True, description="Track opens (a pixel in the HTML); null: the setting's."
    )
    track_clicks: bool | None = Field(
        None, strict=True, description="Track clicks (links through /c/); null: the setting's."
    )


class MessageIn(FeaturesFields, MessageFields):
    send_at: AwareDatetime | None = Field(None, description="Not before this time; past: now.")
    reference: str | None = Field(
        None,
        min_length=1,
        max_length=messages.MAX_REFERENCE_LENGTH,
        description="A group, e.g. one meeting's reminders, to cancel together.",
    )
    ttl_seconds: int | None = Field(
        None,
        ge=messages.MIN_TTL_SECONDS,
        le=messages.MAX_TTL_SECONDS,
        strict=True,
        description="Give up (dead) when not delivered within this time.",
    )


class EventOut(BaseModel):
    type: str
    detail: str | None
    created_at: datetime

    @classmethod
    def of(cls, event: Event) -> EventOut:
        return cls(type=event.type, detail=event.detail, created_at=event.created_at)


class MessageOut(FeaturesOut):
    id: int
    status: MessageStatus
    to: str
    contact_id: int | None
    campaign_id: int | None
    template_id: int | None
    subject: str | None = Field(description="Inline subject; null for a stored template.")
    from_address: str | None = Field(
        description="Its own From; null: its template's or the default."
    )
    category: str | None
    priority: int = Field(description="As given, 0 to 9.")
    reference: str | None
    attempts: int
    last_error: str | None
    not_before: datetime
    expires_at: datetime
    send_window: SendWindowOut | None
    sent_at: datetime | None
    provider_message_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def fields_of(cls, message: Message) -> dict[str, Any]:
        boost = TRANSACTIONAL_PRIORITY_BOOST if message.campaign_id is None else 0
        return {
            "id": message.id,
            "status": MessageStatus(message.status),
            "to": message.to_address,
            "contact_id": message.contact_id,
            "campaign_id": message.campaign_id,
            "template_id": message.template_id,
            "subject": message.subject,
            "from_address": message.from_address,
            **FeaturesOut.features_of(message.features),
            "category": message.category,
            "priority": message.priority - boost,
            "reference": message.reference,
            "attempts": message.attempts,
            "last_error": message.last_error,
            "not_before": message.not_before,
            "expires_at": message.expires_at,
            "send_window": SendWindowOut.of(message.send_window, message.window_timezone),
            "sent_at": message.sent_at,
            "provider_message_id": message.provider_message_id,
            "created_at": message.created_at,
            "updated_at": message.updated_at,
        }


class MessageDetailOut(MessageOut):
    events: list[EventOut] = Field(description="Its history, oldest first.")

    @classmethod
    def of(
        cls, session: Session, message: Message, events: list[Event] | None = None
    ) -> MessageDetailOut:
        """``events``: the history when the caller already holds it (a message just made)."""
        if events is None:
            events = messages.message_events(session=session, message=message)
        return cls(**MessageOut.fields_of(message), events=[EventOut.of(e) for e in events])


class CancelledOut(BaseModel):
    cancelled: int


@router.post("", status_code=201, responses={200: {"model": MessageDetailOut}})
def send_message(
    body: MessageIn,
    response: Response,
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        max_length=messages.MAX_IDEMPOTENCY_KEY_LENGTH,
        description="A repeat with the same key returns the first message (200) instead of sending again.",
    ),
) -> MessageDetailOut:
    request = messages.MessageRequest(
        **body.model_dump(exclude={"send_window", *FeaturesFields.FEATURE_FIELDS}),
        from_address=body.sender(),
        features=body.features(),
        send_window=send_window_of(body.send_window),
        idempotency_key=idempotency_key,
    )
    if runtime.settings.require_verified_from:
        domains.require_verified_sender(
            session=session,
            tenant_id=principal.tenant_id,
            from_address=body.from_address or runtime.settings.from_address,
            field="from_address",
        )
    enqueued = messages.send_message(
        session=session,
        tenant_id=principal.tenant_id,
        request=request,
        renderer=runtime.renderer,
        default_ttl_seconds=runtime.settings.message_ttl_seconds,
        now=now,
        max_attachment_bytes=runtime.settings.max_attachment_bytes,
    )
    if not enqueued.created:
        response.status_code = 200
    events = [enqueued.event] if enqueued.event is not None else None
    return MessageDetailOut.of(session, enqueued.message, events)


@router.get("")
def list_messages(
    principal: ViewerDep,
    session: SessionDep,
    status: MessageStatus | None = Query(None),
    campaign_id: int | None = Query(None, ge=1, le=2**63 - 1),
    reference: str | None = Query(None, min_length=1, max_length=messages.MAX_REFERENCE_LENGTH),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[MessageOut]:
    page = messages.list_messages(
        session=session,
        tenant_id=principal.tenant_id,
        status=status,
        campaign_id=campaign_id,
        reference=reference,
        limit=limit,
        cursor=cursor,
    )
    return PageOut(
        items=[MessageOut(**MessageOut.fields_of(m)) for m in page.items],
        next_cursor=page.next_cursor,
    )


@router.delete("")
def cancel_group(
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    reference: str = Query(min_length=1, max_length=messages.MAX_REFERENCE_LENGTH),
) -> CancelledOut:
    cancelled = messages.cancel_by_reference(
        session=session, tenant_id=principal.tenant_id, reference=reference, now=now
    )
    return CancelledOut(cancelled=cancelled)


@router.get("/{message_id}")
def get_message(message_id: IdPath, principal: ViewerDep, session: SessionDep) -> MessageDetailOut:
    message = messages.get_message(
        session=session, tenant_id=principal.tenant_id, message_id=message_id
    )
    return MessageDetailOut.of(session, message)


@router.delete("/{message_id}")
def cancel_message(
    message_id: IdPath, principal: SenderDep, session: SessionDep, now: NowDep
) -> MessageDetailOut:
    message = messages.cancel_message(
        session=session, tenant_id=principal.tenant_id, message_id=message_id, now=now
    )
    return MessageDetailOut.of(session, message)
