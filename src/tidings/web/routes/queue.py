"""The queue monitor: messages by status, the oldest one waiting, and dead letters to retry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from tidings.api.deps import NowDep, ReadSessionDep, RuntimeDep, SessionDep
from tidings.api.schemas import IdPath
from tidings.domain import MessageStatus
from tidings.queue import status as queue_status
from tidings.services import campaigns
from tidings.web import actions
from tidings.web.auth import SenderAction, UserDep, show
from tidings.web.pages import DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

DEAD_LETTERS_PER_PAGE = 50
#: The order the status counts are shown in: the life of a message.
STATUS_ORDER = [s.value for s in MessageStatus]


@router.get("/queue", response_class=HTMLResponse)
def queue_page(
    request: Request,
    user: UserDep,
    session: ReadSessionDep,
    now: NowDep,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{0,19}$")] = None,
) -> HTMLResponse:
    overview = queue_status.queue_overview(session=session, now=now, tenant_id=user.tenant_id)
    mine = overview.tenants[0] if overview.tenants else None
    oldest = queue_status.oldest_waiting(session=session, now=now, tenant_id=user.tenant_id)
    dead = actions.dead_letters(
        session=session, tenant_id=user.tenant_id, limit=DEAD_LETTERS_PER_PAGE, cursor=cursor
    )
    names = actions.campaign_names(
        session=session,
        tenant_id=user.tenant_id,
        campaign_ids={m.campaign_id for m in dead.items if m.campaign_id is not None},
    )
    return show(
        request,
        user,
        "queue.html",
        counts=mine.counts if mine else {},
        ready=mine.ready if mine else 0,
        workers=overview.workers_alive,
        oldest=oldest,
        now=now,
        statuses=STATUS_ORDER,
        dead=dead,
        campaign_names=names,
    )


@router.post("/queue/messages/{message_id}/retry")
def retry_message(
    message_id: IdPath, user: SenderAction, session: SessionDep, now: NowDep, runtime: RuntimeDep
) -> Response:
    """A transactional message is requeued alone; a campaign's go back together, via the campaign."""
    message = actions.dead_letter(session=session, tenant_id=user.tenant_id, message_id=message_id)
    if message.campaign_id is not None:
        campaigns.retry_failed(
            session=session,
            tenant_id=user.tenant_id,
            campaign_id=message.campaign_id,
            now=now,
            ttl_seconds=runtime.settings.message_ttl_seconds,
        )
        return RedirectResponse("/queue?done=retried", status_code=303)
    actions.requeue_message(
        session=session,
        tenant_id=user.tenant_id,
        message_id=message_id,
        now=now,
        ttl_seconds=runtime.settings.message_ttl_seconds,
    )
    return RedirectResponse("/queue?done=requeued", status_code=303)
