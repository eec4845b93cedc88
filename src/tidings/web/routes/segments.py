"""Segments in the dashboard: the list with each segment's live count (renamed and deleted there,
with the API's refusals shown beside the segment), and the campaign form's builder count (htmx asks as the rows change; the same service as ``POST /v1/segments/preview``)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from tidings.api.deps import NowDep, SessionDep
from tidings.api.errors import status_for
from tidings.api.schemas import IdPath
from tidings.errors import Conflict, InvalidInput
from tidings.services import segments
from tidings.web import segment_builder
from tidings.web.auth import SenderAction, UserDep, WebUser, show
from tidings.web.pages import DashboardRoute, render

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

SEGMENTS_SHOWN = 200
Cells = Annotated[list[str], Query(max_length=segment_builder.MAX_ROWS)]
Text = Annotated[str, Query(max_length=500)]


def _segments_page(
    request: Request,
    user: WebUser,
    session: Session,
    *,
    problem: tuple[int, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    page = segments.list_segments(
        session=session, tenant_id=user.tenant_id, limit=SEGMENTS_SHOWN, cursor=None
    )
    rows = [(s, json.dumps(s.filter, ensure_ascii=False)) for s in page.items]
    return show(request, user, "segments.html", status_code=status_code, rows=rows, problem=problem)


@router.get("/segments", response_class=HTMLResponse)
def segment_page(request: Request, user: UserDep, session: SessionDep) -> HTMLResponse:
    """Each row's count is fetched by itself once the page is shown: a page of many segments over
    a million contacts still opens at once."""
    return _segments_page(request, user, session)


@router.post("/segments/{segment_id}/rename", response_class=HTMLResponse)
def rename_segment(
    request: Request,
    segment_id: IdPath,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    name: Annotated[str, Form(max_length=400)] = "",
) -> Response:
    try:
        with session.begin_nested():
            segments.update_segment(
                session=session,
                tenant_id=user.tenant_id,
                segment_id=segment_id,
                changes={"name": name},
                now=now,
            )
    except (InvalidInput, Conflict) as exc:
        return _segments_page(
            request,
            user,
            session,
            problem=(segment_id, exc.message),
            status_code=status_for(exc),
        )
    return RedirectResponse("/segments?done=segment-renamed", status_code=303)


@router.post("/segments/{segment_id}/delete", response_class=HTMLResponse)
def delete_segment(
    request: Request, segment_id: IdPath, user: SenderAction, session: SessionDep
) -> Response:
    """Refused, with the campaign named, while a campaign that has not started uses it."""
    try:
        with session.begin_nested():
            segments.delete_segment(
                session=session, tenant_id=user.tenant_id, segment_id=segment_id
            )
    except Conflict as exc:
        return _segments_page(
            request, user, session, problem=(segment_id, exc.message), status_code=409
        )
    return RedirectResponse("/segments?done=segment-deleted", status_code=303)


@router.get("/segments/{segment_id}/count", response_class=HTMLResponse)
def segment_count(
    request: Request, segment_id: IdPath, user: UserDep, session: SessionDep
) -> HTMLResponse:
    segment = segments.get_segment(session=session, tenant_id=user.tenant_id, segment_id=segment_id)
    count = segments.count_matching(session=session, segment=segment)
    return render(request, "campaigns/_segment_count.html", {"count": count, "problem": None})


@router.get("/campaigns/new/segment-count", response_class=HTMLResponse)
def builder_count(
    request: Request,
    user: UserDep,
    session: SessionDep,
    seg_match: Text = "all",
    seg_field: Cells = [],  # noqa: B006 - FastAPI copies defaults
    seg_key: Cells = [],  # noqa: B006
    seg_op: Cells = [],  # noqa: B006
    seg_value: Cells = [],  # noqa: B006
) -> HTMLResponse:
    """How many contacts the builder's rows match now, or what is wrong with a row."""
    context: dict[str, object] = {"count": None, "problem": None}
    rows = segment_builder.read_rows(seg_field, seg_key, seg_op, seg_value)
    built = segment_builder.Built(filter=None, rows=())
    try:
        built = segment_builder.build_filter(rows, seg_match)
        if built.filter is None:
            context["problem"] = "Add a condition to count the contacts it matches."
        else:
            found = segments.preview(session=session, tenant_id=user.tenant_id, raw=built.filter)
            context["count"] = found.count
    except InvalidInput as exc:
        context["problem"] = segment_builder.explain(exc, built)
    return render(request, "campaigns/_segment_count.html", context)
