"""The answers of ``GET /v1/contacts/{id}/data`` (GDPR access) and ``POST /v1/contacts/{id}/erase``.

Schemas only; the routes are in ``contacts.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from tidings.services.contact_data import ContactData, MessageRecord
from tidings.services.erasure import Erasure


class DataEventOut(BaseModel):
    type: str
    detail: str | None
    created_at: datetime


class DataListOut(BaseModel):
    id: int
    name: str
    added_at: datetime


class DataPreferenceOut(BaseModel):
    category: str
    subscribed: bool
    updated_at: datetime


class DataSuppressionOut(BaseModel):
    email: str
    reason: str
    detail: str | None
    created_at: datetime


class DataMessageOut(BaseModel):
    id: int
    status: str
    to: str
    campaign_id: int | None
    template_id: int | None
    category: str | None
    subject: str | None = Field(
        description="Inline content; null for a stored template or once purged"
    )
    html: str | None
    text: str | None
    data: dict[str, Any] | None
    reference: str | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    events: list[DataEventOut]
    events_truncated: bool = Field(description="More events exist than the cap shown here")

    @classmethod
    def of(cls, record: MessageRecord) -> DataMessageOut:
        m = record.message
        return cls(
            id=m.id,
            status=m.status,
            to=m.to_address,
            campaign_id=m.campaign_id,
            template_id=m.template_id,
            category=m.category,
            subject=m.subject,
            html=m.html,
            text=m.text,
            data=m.data,
            reference=m.reference,
            last_error=m.last_error,
            created_at=m.created_at,
            sent_at=m.sent_at,
            events=[_event(e) for e in record.events],
            events_truncated=record.events_truncated,
        )


class ContactDataOut(BaseModel):
    contact: dict[str, Any] = Field(description="As GET /v1/contacts/{id} answers it")
    lists: list[DataListOut]
    preferences: list[DataPreferenceOut]
    suppressions: list[DataSuppressionOut]
    events: list[DataEventOut] = Field(description="About the person rather than a message")
    messages: list[DataMessageOut] = Field(description="Newest first, a page at a time")
    tracking_hits: list[dict[str, Any]]
    next_cursor: str | None = Field(description="Pass as cursor for the next messages")

    @classmethod
    def of(cls, found: ContactData, contact: dict[str, Any]) -> ContactDataOut:
        return cls(
            contact=contact,
            lists=[
                DataListOut(id=row.id, name=row.name, added_at=added_at)
                for row, added_at in found.lists
            ],
            preferences=[
                DataPreferenceOut(
                    category=p.category, subscribed=p.subscribed, updated_at=p.updated_at
                )
                for p in found.preferences
            ],
            suppressions=[
                DataSuppressionOut(
                    email=s.email, reason=s.reason, detail=s.detail, created_at=s.created_at
                )
                for s in found.suppressions
            ],
            events=[_event(e) for e in found.person_events],
            messages=[DataMessageOut.of(r) for r in found.messages],
            tracking_hits=found.tracking_hits,
            next_cursor=found.next_cursor,
        )


class ErasureOut(BaseModel):
    contact_id: int
    messages: int = Field(description="Message rows kept without the address and content")
    cancelled: int = Field(description="Of which were still waiting to be sent")
    events: int = Field(description="Event details that named the address, rewritten")
    webhook_deliveries: int
    suppression_reason: str = Field(description="The reason the hashed suppression keeps")

    @classmethod
    def of(cls, done: Erasure) -> ErasureOut:
        return cls(
            contact_id=done.contact_id,
            messages=done.messages,
            cancelled=done.cancelled,
            events=done.events,
            webhook_deliveries=done.webhook_deliveries,
            suppression_reason=done.suppression_reason,
        )


def _event(event: Any) -> DataEventOut:
    return DataEventOut(type=event.type, detail=event.detail, created_at=event.created_at)
