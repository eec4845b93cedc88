"""Campaign pages: the list with live progress, one campaign's figures and controls, and its actions."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from tidings.api.deps import NowDep, ReadSessionDep, RuntimeDep, SessionDep
from tidings.api.schemas import IdPath
from tidings.domain import FINAL_CAMPAIGN_STATUSES
from tidings.errors import InvalidInput, NotFound
from tidings.scheduling.windows import window_from_json
from tidings.services import (
    campaign_results,
    campaign_stats,
    campaign_tests,
    campaigns,
    templates,
    tenant_settings,
)
from tidings.web import actions
from tidings.web.auth import SenderAction, UserDep, WebUser, show
from tidings.web.chart import sends_per_minute_chart
from tidings.web.engagement import campaign_engagement, follows_engagement, render_engagement
from tidings.web.pages import DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

CAMPAIGNS_PER_PAGE = 25
FAILED_PER_PAGE = 50
Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{0,19}$")]

FINAL = FINAL_CAMPAIGN_STATUSES
#: Which buttons a campaign in each status offers (the template hides the others, and so does the
#: page's script when the status changes under it).
ACTIONS_BY_STATUS = {
    "start": ("draft",),
    "pause": ("preparing", "running"),
    "resume": ("paused",),
    "cancel": ("draft", "scheduled", "preparing", "running", "paused"),
    "retry-failed": ("running", "paused", "completed", "failed"),
    "delete": ("draft",),
}


@router.get("/", response_class=HTMLResponse)
def campaign_list(
    request: Request, user: UserDep, session: ReadSessionDep, now: NowDep, cursor: Cursor = None
) -> HTMLResponse:
    page = campaigns.list_campaigns(
        session=session, tenant_id=user.tenant_id, limit=CAMPAIGNS_PER_PAGE, cursor=cursor
    )
    progress = campaigns.campaign_progress(session=session, campaigns=page.items, now=now)
    rates = campaign_stats.campaign_summaries(
        session=session, tenant_id=user.tenant_id, campaign_ids=[c.id for c in page.items]
    )
    live = [c.id for c in page.items if c.status not in FINAL]
    return show(
        request,
        user,
        "campaigns/list.html",
        campaigns=page.items,
        progress=progress,
        rates=rates,
        next_cursor=page.next_cursor,
        live_ids=live,
    )


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def campaign_detail(
    request: Request,
    campaign_id: IdPath,
    user: UserDep,
    session: ReadSessionDep,
    now: NowDep,
    failed_cursor: Cursor = None,
) -> HTMLResponse:
    return _detail_page(request, user, session, now, campaign_id, failed_cursor)


@router.get("/campaigns/{campaign_id}/recipients.csv")
def recipients_csv(
    campaign_id: IdPath, user: UserDep, session: SessionDep, runtime: RuntimeDep
) -> StreamingResponse:
    """The export button: every recipient's results as CSV, the API's export for a signed-in
    user of any role (``services/campaign_results.py``)."""
    selection = campaign_results.results_selection(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id
    )
    csv = campaign_results.ResultsFormat.csv
    return StreamingResponse(
        campaign_results.export_results(runtime.sessions, selection=selection, file_format=csv),
        media_type=campaign_results.MEDIA_TYPES[csv],
        headers=campaign_results.download_headers(selection, csv),
    )


def _detail_page(
    request: Request,
    user: WebUser,
    session: Session,
    now: datetime,
    campaign_id: int,
    failed_cursor: str | None = None,
    *,
    status_code: int = 200,
    test_form: TestForm | None = None,
) -> HTMLResponse:
    campaign = campaigns.get_campaign(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id
    )
    progress = campaigns.campaign_progress(session=session, campaigns=[campaign], now=now)
    failed = campaigns.list_failed_recipients(
        session=session,
        tenant_id=user.tenant_id,
        campaign_id=campaign.id,
        limit=FAILED_PER_PAGE,
        cursor=failed_cursor,
    )
    template = templates.get_template(
        session=session, tenant_id=user.tenant_id, template_id=campaign.template_id
    )
    list_names = actions.list_names(
        session=session, tenant_id=user.tenant_id, list_ids=list(campaign.list_ids)
    )
    chart = sends_per_minute_chart(
        actions.sent_per_minute(session=session, tenant_id=user.tenant_id, campaign_id=campaign.id)
    )
    return show(
        request,
        user,
        "campaigns/detail.html",
        campaign=campaign,
        progress=progress[campaign.id],
        template=template,
        list_names=list_names,
        failed=failed,
        chart=chart,
        engagement_html=(
            render_engagement(campaign_engagement(session=session, campaign=campaign))
            if campaign.started_at
            else ""
        ),
        follow_engagement=follows_engagement(campaign, now),
        actions_by_status=ACTIONS_BY_STATUS,
        final=campaign.status in FINAL,
        timezone=tenant_settings.timezone_of(session=session, tenant_id=user.tenant_id),
        send_window=window_from_json(campaign.send_window) if campaign.send_window else None,
        test_form=test_form or TestForm(),
        max_test_recipients=campaign_tests.MAX_TEST_RECIPIENTS,
        status_code=status_code,
    )


@dataclass(frozen=True, slots=True)
class TestForm:
    """The "Send a test" form as it was filled in, and what was wrong with it."""

    to: str = ""
    contact_id: str = ""
    error: str | None = None


@router.post("/campaigns/{campaign_id}/test", response_class=HTMLResponse)
def send_test(
    request: Request,
    campaign_id: IdPath,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
    to: Annotated[str, Form(max_length=4000)] = "",
    contact_id: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """The campaign to the addresses given (commas, spaces or lines between them), as the
    optional contact would get it; the page again with the reason when it cannot go."""
    form = TestForm(to=to, contact_id=contact_id)
    addresses = [a for a in re.split(r"[\s,;]+", to) if a]
    try:
        if contact_id.strip() and not contact_id.strip().isdigit():
            raise InvalidInput("the contact must be a contact id (a number)", field="contact_id")
        # Everything is checked before the first write: a refusal leaves nothing behind.
        campaign_tests.send_campaign_test(
            session=session,
            tenant_id=user.tenant_id,
            campaign_id=campaign_id,
            to=addresses,
            contact_id=int(contact_id) if contact_id.strip() else None,
            renderer=runtime.renderer,
            ttl_seconds=runtime.settings.message_ttl_seconds,
            now=now,
        )
    except (InvalidInput, NotFound) as exc:
        if isinstance(exc, NotFound) and exc.field is None:
            raise  # the campaign itself: the not-found page
        failed = replace(form, error=exc.message)
        return _detail_page(
            request, user, session, now, campaign_id, status_code=422, test_form=failed
        )
    return _after(campaign_id, "test-sent")


def _after(campaign_id: int, done: str) -> RedirectResponse:
    return RedirectResponse(f"/campaigns/{campaign_id}?done={done}", status_code=303)


@router.post("/campaigns/{campaign_id}/start")
def start(
    campaign_id: IdPath, user: SenderAction, session: SessionDep, now: NowDep, runtime: RuntimeDep
) -> Response:
    campaign = campaigns.start_campaign(
        session=session,
        tenant_id=user.tenant_id,
        campaign_id=campaign_id,
        now=now,
        ttl_seconds=runtime.settings.message_ttl_seconds,
    )
    return _after(campaign.id, "scheduled" if campaign.status == "scheduled" else "started")


@router.post("/campaigns/{campaign_id}/pause")
def pause(campaign_id: IdPath, user: SenderAction, session: SessionDep, now: NowDep) -> Response:
    campaigns.pause_campaign(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id, now=now
    )
    return _after(campaign_id, "paused")


@router.post("/campaigns/{campaign_id}/resume")
def resume(campaign_id: IdPath, user: SenderAction, session: SessionDep, now: NowDep) -> Response:
    campaigns.resume_campaign(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id, now=now
    )
    return _after(campaign_id, "resumed")


@router.post("/campaigns/{campaign_id}/cancel")
def cancel(campaign_id: IdPath, user: SenderAction, session: SessionDep, now: NowDep) -> Response:
    campaigns.cancel_campaign(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id, now=now
    )
    return _after(campaign_id, "cancelled")


@router.post("/campaigns/{campaign_id}/retry-failed")
def retry_failed(
    campaign_id: IdPath, user: SenderAction, session: SessionDep, now: NowDep, runtime: RuntimeDep
) -> Response:
    campaigns.retry_failed(
        session=session,
        tenant_id=user.tenant_id,
        campaign_id=campaign_id,
        now=now,
        ttl_seconds=runtime.settings.message_ttl_seconds,
    )
    return _after(campaign_id, "retried")


@router.post("/campaigns/{campaign_id}/delete")
def delete(campaign_id: IdPath, user: SenderAction, session: SessionDep, now: NowDep) -> Response:
    campaigns.delete_campaign(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id, now=now
    )
    return RedirectResponse("/?done=deleted", status_code=303)
