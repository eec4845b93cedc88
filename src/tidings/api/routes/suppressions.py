"""``/v1/suppressions``: addresses the tenant never mails (unsubscribed, bounced, complained, manual).

Senders add entries; only admins remove them, because removing one lets mail reach a person who
unsubscribed or complained, and that can cost the sender's domain its reputation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

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
from tidings.api.schemas import ERROR_RESPONSES, PageOut, StrictModel
from tidings.db.models import Suppression
from tidings.domain import SuppressionReason
from tidings.services import suppressions
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/suppressions",
    tags=["suppressions"],
    responses=ERROR_RESPONSES,
    route_class=KeyFirstRoute,
)

EmailPath = Annotated[str, Path(min_length=3, max_length=320, description="The address")]


class SuppressionIn(StrictModel):
    email: str = Field(max_length=320)
    reason: SuppressionReason = SuppressionReason.manual
    detail: str | None = Field(None, max_length=suppressions.MAX_DETAIL_LENGTH)


class SuppressionOut(BaseModel):
    id: int
    email: str
    reason: SuppressionReason
    detail: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Suppression) -> SuppressionOut:
        return cls(
            id=row.id,
            email=row.email,
            reason=SuppressionReason(row.reason),
            detail=row.detail,
            created_at=row.created_at,
        )


@router.get("")
def list_suppressions(
    principal: ViewerDep,
    session: SessionDep,
    reason: SuppressionReason | None = Query(None),
    q: str | None = Query(
        None, max_length=suppressions.MAX_QUERY_LENGTH, description="Part of the address, any case"
    ),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[SuppressionOut]:
    page = suppressions.list_suppressions(
        session=session,
        tenant_id=principal.tenant_id,
        reason=reason,
        q=q,
        limit=limit,
        cursor=cursor,
    )
    return PageOut(
        items=[SuppressionOut.of(row) for row in page.items], next_cursor=page.next_cursor
    )


@router.post("", status_code=201, responses={200: {"description": "Updated the existing entry"}})
def add_suppression(
    body: SuppressionIn, response: Response, principal: SenderDep, session: SessionDep, now: NowDep
) -> SuppressionOut:
    """Add the address, or give its existing entry this reason and detail."""
    row, created = suppressions.upsert_suppression(
        session=session,
        tenant_id=principal.tenant_id,
        email=body.email,
        reason=body.reason,
        detail=body.detail,
        now=now,
    )
    if not created:
        response.status_code = 200
    return SuppressionOut.of(row)


@router.delete("/{email}", status_code=204)
def delete_suppression(
    email: EmailPath, principal: AdminDep, session: SessionDep, runtime: RuntimeDep
) -> Response:
    suppressions.delete_suppression(
        session=session,
        tenant_id=principal.tenant_id,
        email=email,
        address_key=address_key(runtime.secret_key),
    )
    return Response(status_code=204)
