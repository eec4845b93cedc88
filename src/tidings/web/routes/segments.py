"""Segments in the dashboard: the list with each segment's live count, and the campaign form's
builder count (htmx asks as the rows change; the same service as ``POST /v1/segments/preview``)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from tidings.api.deps import SessionDep
from tidings.api.schemas import IdPath
from tidings.errors import InvalidInput
from tidings.services import segments
from tidings.web import segment_builder
from tidings.web.auth import UserDep, show
from tidings.web.pages import DashboardRoute, render

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

SEGMENTS_SHOWN = 200
Cells = Annotated[list[str], Query(max_length=segment_builder.MAX_ROWS)]
Text = Annotated[str, Query(max_length=500)]


@router.get("/segments", response_class=HTMLResponse)
def segment_page(request: Request, user: UserDep, session: SessionDep) -> HTMLResponse:
    """Each row's count is fetched by itself once the page is shown: a page of many segments over
    a million contacts still opens at once."""
    page = segments.list_segments(
        session=session, tenant_id=user.tenant_id, limit=SEGMENTS_SHOWN, cursor=None
    )
    rows = [(s, json.dumps(s.filter, ensure_ascii=False)) for s in page.items]
    return show(request, user, "segments.html", rows=rows)


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
