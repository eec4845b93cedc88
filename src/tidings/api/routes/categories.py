"""``/v1/categories``: the kinds of mail a tenant sends, each a choice in the preference centre."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from tidings.api.deps import KeyFirstRoute, NowDep, SenderDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, IdPath, PageOut, StrictModel
from tidings.db.models import Category
from tidings.services import categories
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/categories",
    tags=["categories"],
    responses=ERROR_RESPONSES,
    route_class=KeyFirstRoute,
)


class CategoryIn(StrictModel):
    name: str = Field(
        pattern=categories.NAME_PATTERN,
        description="The slug messages and campaigns carry as their category",
        examples=["reminders"],
    )
    description: str | None = Field(
        None,
        max_length=categories.MAX_DESCRIPTION_LENGTH,
        description="Shown to recipients in the preference centre",
    )


class CategoryOut(BaseModel):
    id: int
    name: str
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Category) -> CategoryOut:
        return cls(id=row.id, name=row.name, description=row.description, created_at=row.created_at)


@router.get("")
def list_categories(
    principal: ViewerDep,
    session: SessionDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[CategoryOut]:
    page = categories.list_categories(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    return PageOut(items=[CategoryOut.of(row) for row in page.items], next_cursor=page.next_cursor)


@router.post("", status_code=201)
def create_category(
    body: CategoryIn, principal: SenderDep, session: SessionDep, now: NowDep
) -> CategoryOut:
    row = categories.create_category(
        session=session,
        tenant_id=principal.tenant_id,
        name=body.name,
        description=body.description,
        now=now,
    )
    return CategoryOut.of(row)


@router.delete("/{category_id}", status_code=204)
def delete_category(category_id: IdPath, principal: SenderDep, session: SessionDep) -> Response:
    """The contacts' choices about it are kept (see services/categories.py)."""
    categories.delete_category(
        session=session, tenant_id=principal.tenant_id, category_id=category_id
    )
    return Response(status_code=204)
