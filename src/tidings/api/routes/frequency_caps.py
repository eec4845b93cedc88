"""``/v1/frequency-caps``: at most N messages of a category to one contact per rolling day
(admins change them, like the throttle)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from tidings.api.deps import AdminDep, KeyFirstRoute, NowDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, PageOut, StrictModel
from tidings.db.models import FrequencyCap
from tidings.domain import FrequencyCapMode
from tidings.services import frequency
from tidings.services.messages import MAX_CATEGORY_LENGTH
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/frequency-caps",
    tags=["frequency caps"],
    responses=ERROR_RESPONSES,
    route_class=KeyFirstRoute,
)

CategoryPath = Annotated[
    str, Path(min_length=1, max_length=MAX_CATEGORY_LENGTH, description="The category")
]


class FrequencyCapIn(StrictModel):
    max_per_day: int = Field(strict=True, ge=1, le=frequency.MAX_PER_DAY)
    mode: FrequencyCapMode = Field(
        FrequencyCapMode.delay,
        description="delay: wait for the next free slot; suppress: do not send it",
    )


class FrequencyCapOut(BaseModel):
    category: str
    max_per_day: int
    mode: FrequencyCapMode
    created_at: datetime

    @classmethod
    def of(cls, row: FrequencyCap) -> FrequencyCapOut:
        return cls(
            category=row.category,
            max_per_day=row.max_per_day,
            mode=FrequencyCapMode(row.mode),
            created_at=row.created_at,
        )


@router.get("")
def list_frequency_caps(
    principal: ViewerDep,
    session: SessionDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[FrequencyCapOut]:
    page = frequency.list_caps(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    return PageOut(
        items=[FrequencyCapOut.of(row) for row in page.items], next_cursor=page.next_cursor
    )


@router.put("/{category}", responses={201: {"description": "Created the cap"}})
def set_frequency_cap(
    category: CategoryPath,
    body: FrequencyCapIn,
    response: Response,
    principal: AdminDep,
    session: SessionDep,
    now: NowDep,
) -> FrequencyCapOut:
    row, created = frequency.set_cap(
        session=session,
        tenant_id=principal.tenant_id,
        category=category,
        max_per_day=body.max_per_day,
        mode=body.mode,
        now=now,
    )
    if created:
        response.status_code = 201
    return FrequencyCapOut.of(row)


@router.delete("/{category}", status_code=204)
def delete_frequency_cap(
    category: CategoryPath, principal: AdminDep, session: SessionDep
) -> Response:
    frequency.delete_cap(session=session, tenant_id=principal.tenant_id, category=category)
    return Response(status_code=204)
