"""``/v1/lists``: the tenant's lists, their members, and streamed bulk imports into a list."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, StrictBool
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from tidings.address_hash import address_key
from tidings.api.deps import KeyFirstRoute, NowDep, RuntimeDep, SenderDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, ErrorResponse, Id, IdPath, PageOut, StrictModel
from tidings.api.uploads import UPLOAD_READ_BYTES, UploadDep
from tidings.db.models import ContactList
from tidings.runtime import Runtime
from tidings.services import imports, lists
from tidings.services.imports import ImportFormat
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/lists", tags=["lists"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

#: Media types an import accepts (JSON Lines has no registered type; these are the ones in use).
IMPORT_MEDIA_TYPES = {
    "text/csv": ImportFormat.csv,
    "application/csv": ImportFormat.csv,
    "application/x-ndjson": ImportFormat.json_lines,
    "application/jsonl": ImportFormat.json_lines,
    "application/jsonlines": ImportFormat.json_lines,
    "application/x-jsonlines": ImportFormat.json_lines,
}
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})


class ListIn(StrictModel):
    name: str = Field(min_length=1, max_length=lists.MAX_NAME_LENGTH)
    description: str | None = Field(None, max_length=lists.MAX_DESCRIPTION_LENGTH)
    double_opt_in: StrictBool = Field(
        False, description="Public sign-ups wait for the confirmation link in a mail"
    )
    public: StrictBool = Field(False, description="GET|POST /s/{public_id} takes sign-ups")


class ListPatch(StrictModel):
    name: str | None = Field(None, min_length=1, max_length=lists.MAX_NAME_LENGTH)
    description: str | None = Field(None, max_length=lists.MAX_DESCRIPTION_LENGTH)
    double_opt_in: StrictBool | None = None
    public: StrictBool | None = None


class ListOut(BaseModel):
    id: int
    name: str
    description: str | None
    member_count: int
    created_at: datetime
    double_opt_in: bool
    public: bool
    public_id: str | None = Field(description="Names the list's sign-up form; never the id")
    signup_url: str | None = Field(description="The hosted sign-up form, while the list is public")

    @classmethod
    def of(cls, contact_list: ContactList, member_count: int, public_url: str) -> ListOut:
        public_id = contact_list.public_id
        return cls(
            id=contact_list.id,
            name=contact_list.name,
            description=contact_list.description,
            member_count=member_count,
            created_at=contact_list.created_at,
            double_opt_in=contact_list.double_opt_in,
            public=contact_list.public,
            public_id=public_id,
            signup_url=signup_url(public_url, public_id) if contact_list.public else None,
        )


def signup_url(public_url: str, public_id: str | None) -> str | None:
    return f"{public_url.rstrip('/')}/s/{public_id}" if public_id else None


class MembersIn(StrictModel):
    contact_ids: list[Id] = Field(min_length=1, max_length=lists.MAX_MEMBERS_PER_REQUEST)


class MembersOut(BaseModel):
    list_id: int
    added: int = Field(description="Contacts that were not members before")
    member_count: int


class SkippedOut(BaseModel):
    line: int
    reason: str


class ImportOut(BaseModel):
    created: int
    updated: int
    skipped: list[SkippedOut] = Field(description="The first skipped rows, by line")
    skipped_count: int
    total_rows: int
    added_to_list: int


def _out(session: Session, contact_list: ContactList, runtime: Runtime) -> ListOut:
    counts = lists.member_counts(session=session, list_ids=[contact_list.id])
    return ListOut.of(contact_list, counts[contact_list.id], runtime.settings.public_url)


@router.get("")
def list_lists(
    principal: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[ListOut]:
    page = lists.list_lists(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    counts = lists.member_counts(session=session, list_ids=[item.id for item in page.items])
    return PageOut(
        items=[
            ListOut.of(item, counts[item.id], runtime.settings.public_url) for item in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.post("", status_code=201)
def create_list(
    body: ListIn, principal: SenderDep, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> ListOut:
    created = lists.create_list(
        session=session,
        tenant_id=principal.tenant_id,
        name=body.name,
        description=body.description,
        now=now,
        double_opt_in=body.double_opt_in,
        public=body.public,
    )
    return ListOut.of(created, 0, runtime.settings.public_url)


@router.get("/{list_id}")
def get_list(
    list_id: IdPath, principal: ViewerDep, session: SessionDep, runtime: RuntimeDep
) -> ListOut:
    return _out(
        session,
        lists.get_list(session=session, tenant_id=principal.tenant_id, list_id=list_id),
        runtime,
    )


@router.patch("/{list_id}")
def update_list(
    list_id: IdPath, body: ListPatch, principal: SenderDep, session: SessionDep, runtime: RuntimeDep
) -> ListOut:
    changes = body.model_dump(exclude_unset=True)
    for flag in ("double_opt_in", "public"):
        if flag in changes and changes[flag] is None:  # null leaves a flag as it is
            del changes[flag]
    updated = lists.update_list(
        session=session, tenant_id=principal.tenant_id, list_id=list_id, changes=changes
    )
    return _out(session, updated, runtime)


@router.delete("/{list_id}", status_code=204)
def delete_list(list_id: IdPath, principal: SenderDep, session: SessionDep) -> Response:
    lists.delete_list(session=session, tenant_id=principal.tenant_id, list_id=list_id)
    return Response(status_code=204)


@router.post("/{list_id}/members")
def add_members(
    list_id: IdPath, body: MembersIn, principal: SenderDep, session: SessionDep, now: NowDep
) -> MembersOut:
    added = lists.add_members(
        session=session,
        tenant_id=principal.tenant_id,
        list_id=list_id,
        contact_ids=body.contact_ids,
        now=now,
    )
    count = lists.member_counts(session=session, list_ids=[list_id])[list_id]
    return MembersOut(list_id=list_id, added=added, member_count=count)


@router.delete("/{list_id}/members/{contact_id}", status_code=204)
def remove_member(
    list_id: IdPath, contact_id: IdPath, principal: SenderDep, session: SessionDep
) -> Response:
    lists.remove_member(
        session=session, tenant_id=principal.tenant_id, list_id=list_id, contact_id=contact_id
    )
    return Response(status_code=204)


async def import_format(request: Request) -> ImportFormat:
    """The file's format, from its media type: checked before a byte of the upload is read."""
    media_type, *parameters = request.headers.get("content-type", "").split(";")
    file_format = IMPORT_MEDIA_TYPES.get(media_type.strip().lower())
    if file_format is None:
        raise HTTPException(415, "send the file as text/csv or application/x-ndjson (JSON Lines)")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if (
            name.strip().lower() == "charset"
            and value.strip().strip('"').lower() not in UTF8_CHARSETS
        ):
            raise HTTPException(415, "the file must be UTF-8 (charset=utf-8)")
    return file_format


@router.post(
    "/{list_id}/import",
    responses={415: {"model": ErrorResponse}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A CSV file with a header line (an email column, then name, first_name,"
            " last_name, timezone, locale, status; other columns become attributes), or JSON"
            " Lines (one object per line). UTF-8, streamed.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
def import_into_list(
    list_id: IdPath,
    principal: SenderDep,
    file_format: Annotated[ImportFormat, Depends(import_format)],
    upload: UploadDep,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
) -> ImportOut:
    """Upserts every row by address and adds it to the list, in one transaction: a file that
    cannot be read changes nothing; rows that are bad on their own are skipped with a reason.

    The upload is on disk before the first statement (the order of the parameters is the order
    FastAPI solves them in): a slow client holds no lock, connection or session meanwhile.
    """
    result = imports.import_contacts(
        session=session,
        tenant_id=principal.tenant_id,
        list_id=list_id,
        chunks=iter(functools.partial(upload.read, UPLOAD_READ_BYTES), b""),
        file_format=file_format,
        now=now,
        max_attributes_bytes=runtime.settings.max_attributes_bytes,
        address_key=address_key(runtime.secret_key),
    )
    return ImportOut(
        created=result.created,
        updated=result.updated,
        skipped=[SkippedOut(line=s.line, reason=s.reason) for s in result.skipped],
        skipped_count=result.skipped_count,
        total_rows=result.total_rows,
        added_to_list=result.added_to_list,
    )
