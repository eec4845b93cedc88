"""``/v1/contacts``: the tenant's contacts; ``POST`` upserts by address (201 created, 200 updated)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictBool
from sqlalchemy.orm import Session

from tidings.address_hash import address_key
from tidings.api.deps import (
    AdminDep,
    KeyFirstRoute,
    NowDep,
    RuntimeDep,
    SenderDep,
    SessionDep,
    ViewerDep,
)
from tidings.api.routes.contact_data import ContactDataOut, ErasureOut
from tidings.api.schemas import ERROR_RESPONSES, MAX_ID, Id, IdPath, PageOut, StrictModel
from tidings.db.models import Contact
from tidings.domain import ContactStatus
from tidings.services import contact_data, contacts, erasure, exports, preferences, suppressions
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/contacts", tags=["contacts"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

MAX_LISTS_PER_CONTACT_REQUEST = 100
MAX_CATEGORY_CHOICES = 200  # categories set in one request


class ContactFields(StrictModel):
    name: str | None = Field(None, max_length=contacts.TEXT_FIELDS["name"])
    first_name: str | None = Field(None, max_length=contacts.TEXT_FIELDS["first_name"])
    last_name: str | None = Field(None, max_length=contacts.TEXT_FIELDS["last_name"])
    timezone: str | None = Field(None, max_length=64, description="IANA name, e.g. Europe/Paris")
    locale: str | None = Field(None, max_length=contacts.MAX_LOCALE_LENGTH, examples=["pt-BR"])
    attributes: dict[str, Any] | None = Field(
        None, description="Free JSON object, available to templates as contact.attributes"
    )
    status: ContactStatus | None = None


class ContactIn(ContactFields):
    email: str = Field(max_length=320)
    list_ids: list[Id] = Field(
        default_factory=list,
        max_length=MAX_LISTS_PER_CONTACT_REQUEST,
        description="Lists to add the contact to (existing memberships are kept)",
    )


class ContactPatch(ContactFields):
    """Only the fields sent change; null clears a field; ``attributes`` replaces the whole object."""

    email: str | None = Field(None, max_length=320)


class ContactOut(BaseModel):
    id: int
    email: str
    name: str | None
    first_name: str | None
    last_name: str | None
    timezone: str | None
    locale: str | None
    attributes: dict[str, Any]
    status: ContactStatus
    list_ids: list[int]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, contact: Contact, list_ids: list[int]) -> ContactOut:
        return cls(
            id=contact.id,
            email=contact.email,
            name=contact.name,
            first_name=contact.first_name,
            last_name=contact.last_name,
            timezone=contact.timezone,
            locale=contact.locale,
            attributes=contact.attributes,
            status=ContactStatus(contact.status),
            list_ids=list_ids,
            created_at=contact.created_at,
            updated_at=contact.updated_at,
        )


def _outs(session: Session, tenant_id: int, rows: list[Contact]) -> list[ContactOut]:
    memberships = contacts.list_ids_of(
        session=session, tenant_id=tenant_id, contact_ids=[c.id for c in rows]
    )
    return [ContactOut.of(c, memberships[c.id]) for c in rows]


@router.get("")
def list_contacts(
    principal: ViewerDep,
    session: SessionDep,
    status: ContactStatus | None = Query(None),
    list_id: int | None = Query(None, ge=1, le=MAX_ID, description="Only members of this list"),
    q: str | None = Query(
        None, max_length=contacts.MAX_QUERY_LENGTH, description="Part of the address, any case"
    ),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[ContactOut]:
    page = contacts.list_contacts(
        session=session,
        tenant_id=principal.tenant_id,
        status=status,
        list_id=list_id,
        q=q,
        limit=limit,
        cursor=cursor,
    )
    return PageOut(
        items=_outs(session, principal.tenant_id, list(page.items)), next_cursor=page.next_cursor
    )


@router.post("", status_code=201, responses={200: {"description": "Updated an existing contact"}})
def upsert_contact(
    body: ContactIn,
    response: Response,
    principal: SenderDep,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
) -> ContactOut:
    contact, created = contacts.upsert_contact(
        session=session,
        tenant_id=principal.tenant_id,
        fields=body.model_dump(exclude_unset=True, exclude={"list_ids"}),
        list_ids=body.list_ids,
        max_attributes_bytes=runtime.settings.max_attributes_bytes,
        now=now,
    )
    # An erased address that comes back stays suppressed (services/suppressions.py).
    suppressions.restore_erased(
        session=session,
        tenant_id=principal.tenant_id,
        addresses=[contact.email],
        address_key=address_key(runtime.secret_key),
    )
    if not created:
        response.status_code = 200
    return _outs(session, principal.tenant_id, [contact])[0]


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every matching contact, streamed (see services/exports.py)",
            "content": {"text/csv": {}, "application/x-ndjson": {}},
        }
    },
)
def export_contacts(
    principal: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    file_format: exports.ExportFormat = Query(exports.ExportFormat.csv, alias="format"),
    list_id: int | None = Query(None, ge=1, le=MAX_ID, description="Only members of this list"),
    segment_id: int | None = Query(None, ge=1, le=MAX_ID, description="Only this segment"),
    status: ContactStatus | None = Query(None),
) -> StreamingResponse:
    """CSV (fixed header; attributes as one JSON cell; formula-looking cells prefixed with ')
    or JSON Lines, read in keyset pages while it streams: memory stays flat at any size."""
    where = exports.export_filter(
        session=session,
        tenant_id=principal.tenant_id,
        list_id=list_id,
        segment_id=segment_id,
        status=status,
    )
    body = exports.export_contacts(
        runtime.sessions, selection=where, file_format=file_format, tenant_id=principal.tenant_id
    )
    return StreamingResponse(
        body,
        media_type=exports.MEDIA_TYPES[file_format],
        headers={
            "Content-Disposition": f'attachment; filename="contacts.{file_format.value}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/{contact_id}/data")
def get_contact_data(
    contact_id: IdPath,
    principal: ViewerDep,
    session: SessionDep,
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous answer"
    ),
) -> ContactDataOut:
    """Everything held about one contact (GDPR access); messages are paged by ``next_cursor``."""
    return access_document(
        session=session, tenant_id=principal.tenant_id, contact_id=contact_id, cursor=cursor
    )


def access_document(
    *,
    session: Session,
    tenant_id: int,
    contact_id: int,
    cursor: str | None = None,
    every_page: bool = False,
) -> ContactDataOut:
    """The GDPR access document, the one builder behind the API, ``tidings contacts data`` and the
    dashboard's download. ``every_page`` follows ``next_cursor`` to the last message, for a file
    handed to the person: it must hold everything, not the first page."""
    found = contact_data.contact_data(
        session=session, tenant_id=tenant_id, contact_id=contact_id, cursor=cursor
    )
    document = ContactDataOut.of(found, _outs(session, tenant_id, [found.contact])[0].model_dump())
    while every_page and document.next_cursor is not None:
        more = contact_data.contact_data(
            session=session, tenant_id=tenant_id, contact_id=contact_id, cursor=document.next_cursor
        )
        document.messages.extend(ContactDataOut.of(more, document.contact).messages)
        document.next_cursor = more.next_cursor
    return document


@router.post("/{contact_id}/erase")
def erase_contact(
    contact_id: IdPath, principal: AdminDep, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> ErasureOut:
    """Delete the contact and replace its address by a keyed hash everywhere (GDPR erasure)."""
    done = erasure.erase_contact(
        session=session,
        tenant_id=principal.tenant_id,
        contact_id=contact_id,
        address_key=address_key(runtime.secret_key),
        now=now,
    )
    return ErasureOut.of(done)


@router.get("/{contact_id}")
def get_contact(contact_id: IdPath, principal: ViewerDep, session: SessionDep) -> ContactOut:
    contact = contacts.get_contact(
        session=session, tenant_id=principal.tenant_id, contact_id=contact_id
    )
    return _outs(session, principal.tenant_id, [contact])[0]


@router.patch("/{contact_id}")
def update_contact(
    contact_id: IdPath,
    body: ContactPatch,
    principal: SenderDep,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
) -> ContactOut:
    contact = contacts.update_contact(
        session=session,
        tenant_id=principal.tenant_id,
        contact_id=contact_id,
        changes=body.model_dump(exclude_unset=True),
        max_attributes_bytes=runtime.settings.max_attributes_bytes,
        now=now,
    )
    return _outs(session, principal.tenant_id, [contact])[0]


class PreferencesIO(StrictModel):
    categories: dict[str, StrictBool] = Field(
        max_length=MAX_CATEGORY_CHOICES,
        description="Category name -> whether the contact receives it. On PUT, categories left "
        "out keep their choice.",
    )


@router.get("/{contact_id}/preferences")
def get_preferences(contact_id: IdPath, principal: ViewerDep, session: SessionDep) -> PreferencesIO:
    return PreferencesIO(
        categories=preferences.contact_choices(
            session=session, tenant_id=principal.tenant_id, contact_id=contact_id
        )
    )


@router.put("/{contact_id}/preferences")
def put_preferences(
    contact_id: IdPath, body: PreferencesIO, principal: SenderDep, session: SessionDep, now: NowDep
) -> PreferencesIO:
    return PreferencesIO(
        categories=preferences.set_contact_choices(
            session=session,
            tenant_id=principal.tenant_id,
            contact_id=contact_id,
            choices=body.categories,
            now=now,
        )
    )


@router.delete("/{contact_id}", status_code=204)
def delete_contact(contact_id: IdPath, principal: SenderDep, session: SessionDep) -> Response:
    contacts.delete_contact(session=session, tenant_id=principal.tenant_id, contact_id=contact_id)
    return Response(status_code=204)
