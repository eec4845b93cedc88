"""``/v1/segments``: saved filters over the tenant's contacts, and a live preview of a filter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from tidings.api.deps import KeyFirstRoute, NowDep, SenderDep, SessionDep, ViewerDep
from tidings.api.routes.contacts import ContactOut
from tidings.api.schemas import ERROR_RESPONSES, IdPath, PageOut, StrictModel
from tidings.db.models import Segment
from tidings.services import contacts, segments
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/segments", tags=["segments"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

FILTER_DESCRIPTION = (
    'A tree of {"all": [...]}, {"any": [...]}, {"not": {...}}, {"in_list": id} and leaves '
    '{"field": "attributes.city", "op": "eq", "value": "Paris"}. Fields: email, name, status, '
    "timezone, locale, created_at, attributes.<name>. Ops: eq, ne, in, contains, starts_with, "
    "gt, gte, lt, lte, exists. A missing attribute makes every op false except ne (true); not "
    "is the exact complement."
)


class SegmentIn(StrictModel):
    name: str = Field(min_length=1, max_length=segments.MAX_NAME_LENGTH)
    # Any: checked by the service, which names the exact path of what is wrong.
    filter: Any = Field(description=FILTER_DESCRIPTION)


class SegmentPatch(StrictModel):
    name: str | None = Field(None, min_length=1, max_length=segments.MAX_NAME_LENGTH)
    filter: Any = Field(None, description=FILTER_DESCRIPTION)


class PreviewIn(StrictModel):
    filter: Any = Field(description=FILTER_DESCRIPTION)


class SegmentOut(BaseModel):
    id: int
    name: str
    filter: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, segment: Segment) -> SegmentOut:
        return cls(
            id=segment.id,
            name=segment.name,
            filter=segment.filter,
            created_at=segment.created_at,
            updated_at=segment.updated_at,
        )


class PreviewOut(BaseModel):
    count: int = Field(description="Contacts the filter matches now, whatever their status.")
    sample: list[ContactOut] = Field(description="The first of them, by id.")


@router.get("")
def list_segments(
    principal: ViewerDep,
    session: SessionDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[SegmentOut]:
    page = segments.list_segments(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    return PageOut(items=[SegmentOut.of(s) for s in page.items], next_cursor=page.next_cursor)


@router.post("", status_code=201)
def create_segment(
    body: SegmentIn, principal: SenderDep, session: SessionDep, now: NowDep
) -> SegmentOut:
    created = segments.create_segment(
        session=session,
        tenant_id=principal.tenant_id,
        name=body.name,
        raw_filter=body.filter,
        now=now,
    )
    return SegmentOut.of(created)


@router.post("/preview")
def preview_segment(body: PreviewIn, principal: ViewerDep, session: SessionDep) -> PreviewOut:
    """How many contacts a filter matches, and the first few: for building one before saving."""
    found = segments.preview(session=session, tenant_id=principal.tenant_id, raw=body.filter)
    memberships = contacts.list_ids_of(
        session=session, tenant_id=principal.tenant_id, contact_ids=[c.id for c in found.sample]
    )
    return PreviewOut(
        count=found.count, sample=[ContactOut.of(c, memberships[c.id]) for c in found.sample]
    )


@router.get("/{segment_id}")
def get_segment(segment_id: IdPath, principal: ViewerDep, session: SessionDep) -> SegmentOut:
    return SegmentOut.of(
        segments.get_segment(session=session, tenant_id=principal.tenant_id, segment_id=segment_id)
    )


@router.patch("/{segment_id}")
def update_segment(
    segment_id: IdPath, body: SegmentPatch, principal: SenderDep, session: SessionDep, now: NowDep
) -> SegmentOut:
    updated = segments.update_segment(
        session=session,
        tenant_id=principal.tenant_id,
        segment_id=segment_id,
        changes=body.model_dump(exclude_unset=True),
        now=now,
    )
    return SegmentOut.of(updated)


@router.delete("/{segment_id}", status_code=204)
def delete_segment(segment_id: IdPath, principal: SenderDep, session: SessionDep) -> Response:
    """Refused (409) while a draft or scheduled campaign uses the segment."""
    segments.delete_segment(session=session, tenant_id=principal.tenant_id, segment_id=segment_id)
    return Response(status_code=204)
